"""CIFAR-10 from torchvision's python archive or from an ImageFolder-layout copy (folder or archive).

Sources under ``root`` (first found): ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz`` (torchvision),
``cifar10-jpeg/`` or ``cifar10-jpeg/cifar10-jpeg.tar.gz`` (``{train,test}/<class>/*.jpg``).
Decoded once into uint8 [N, 3, 32, 32] images with int64 labels; classes in torchvision's order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from metaticket.data.archive import iter_files
from metaticket.data.cache import decode_once, images_of
from metaticket.data.classification import Classification, TensorImages
from metaticket.data.images import IMAGENET_MEAN, IMAGENET_STD, decode_rgb, resize_uint8
from metaticket.data.registry import ClassImages, DatasetSpec, Source, register_dataset
from metaticket.data.safe_pickle import int_list, loads_pickle, uint8_array
from metaticket.errors import MetaticketError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@dataclass(frozen=True)
class Cifar10:
    train_x: Tensor  # uint8 [50000, 3, 32, 32]
    train_y: Tensor  # int64 [50000]
    test_x: Tensor
    test_y: Tensor
    classes: list[str]

    def by_class(self, split: str) -> Tensor:
        """uint8 [10, M, 3, 32, 32]: the first M images of each class (M the smallest class size)."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        groups = [x[y == c] for c in range(len(self.classes))]
        m = min(len(g) for g in groups)
        return torch.stack([g[:m] for g in groups])


def find_source(root: Path) -> tuple[str, Path] | None:
    for base in (root, root / "cifar10", root / "cifar-10"):
        if (base / "cifar-10-batches-py" / "test_batch").is_file():
            return "batches", base / "cifar-10-batches-py"
        if (base / "cifar-10-python.tar.gz").is_file():
            return "batches", base / "cifar-10-python.tar.gz"
        for folder in (base / "cifar10-jpeg" / "cifar10-jpeg", base / "cifar10-jpeg"):
            if (folder / "train").is_dir() and (folder / "test").is_dir():
                return "folder", folder
        if (base / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").is_file():
            return "folder", base / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
        if (base / "cifar10-jpeg.tar.gz").is_file():
            return "folder", base / "cifar10-jpeg.tar.gz"
    return None


def load_cifar10(root: Path, cache_dir: Path, progress: bool = True) -> Cifar10:
    kind, source = find_source(root) or ("", None)
    build = (lambda: read_batches(source)) if kind == "batches" else (lambda: read_image_folders(source, progress))
    blob = decode_once(None if source is None else [source],
                       f"CIFAR-10 not found under {root}: expected cifar-10-batches-py/ (torchvision) or cifar10-jpeg/ "
                       f"(train/ and test/ class folders, or its .tar.gz); set METATICKET_DATA or data.root",
                       lambda key: cache_dir / f"cifar10-{kind}-{key}.pt", build,
                       keys=("train_x", "train_y", "test_x", "test_y", "classes"),
                       valid=lambda b: images_of("train_x", "test_x", dims=(4,), side=32)(b)
                       and b["train_x"].shape[0] == b["train_y"].shape[0] and
                       b["test_x"].shape[0] == b["test_y"].shape[0])
    return Cifar10(blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], list(blob["classes"]))


def read_batches(source: Path) -> dict:
    """torchvision's ``cifar-10-batches-py`` (folder or ``.tar.gz``): pickled dicts of uint8 rows."""
    out: dict = {"classes": CLASSES}
    wanted = {name for names in BATCHES.values() for name in names}
    blobs: dict[str, bytes] = {}
    for name, raw in iter_files(source, lambda n: n.split("/")[-1] in wanted):
        blobs[name.split("/")[-1]] = raw
    missing = sorted(wanted - set(blobs))
    if missing:
        raise MetaticketError(f"{source} lacks {', '.join(missing)}; the CIFAR-10 archive is incomplete")
    for split, names in BATCHES.items():
        xs, ys = [], []
        for name in names:
            batch = loads_pickle(blobs[name], f"{source}/{name}", encoding="bytes")
            data = batch.get(b"data") if isinstance(batch, dict) else None
            labels = batch.get(b"labels") if isinstance(batch, dict) else None
            if data is None or labels is None:
                raise MetaticketError(f"{source}/{name} has no data/labels entries: not a CIFAR-10 batch; download "
                                      f"cifar-10-python.tar.gz again")
            where = f"{source}/{name}"
            data = uint8_array(data, where, "data", 2)
            if data.shape[1] != 3 * 32 * 32:
                raise MetaticketError(f"{where}: data rows hold {data.shape[1]} bytes, expected 3072 (3 x 32 x 32); "
                                      f"not a CIFAR-10 batch, download cifar-10-python.tar.gz again")
            labels = int_list(labels, where, "labels", len(CLASSES))
            if len(labels) != data.shape[0]:
                raise MetaticketError(f"{where}: {data.shape[0]} images but {len(labels)} labels; the batch is "
                                      f"damaged, download cifar-10-python.tar.gz again")
            xs.append(torch.as_tensor(data).view(-1, 3, 32, 32))
            ys.append(torch.as_tensor(labels, dtype=torch.int64))
        out[f"{split}_x"] = torch.cat(xs)
        out[f"{split}_y"] = torch.cat(ys)
    return out


def read_image_folders(source: Path, progress: bool) -> dict:
    """``{train,test}/<class>/<file>`` JPEG/PNG files (folder or archive); classes sorted by name."""
    from tqdm import tqdm

    pattern = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+\.(?:jpe?g|png))$", re.IGNORECASE)
    found: dict[str, dict[str, list[tuple[str, Tensor]]]] = {"train": {}, "test": {}}
    bar = tqdm(desc="decoding CIFAR-10 (once)", unit="img", disable=not progress)
    for name, raw in iter_files(source, lambda n: bool(pattern.search(n))):
        split, cls, file = pattern.search(name).groups()
        found[split.lower()].setdefault(cls, []).append((file, decode_rgb(raw, 32, f"{source}:{name}")))
        bar.update()
    bar.close()
    classes = sorted(found["train"])
    if not classes or sorted(found["test"]) != classes:
        raise MetaticketError(f"{source}: train/ and test/ must hold the same class folders "
                              f"(found {len(classes)} and {len(found['test'])})")
    empty = [c for s in found for c in classes if not found[s].get(c)]
    if empty:
        raise MetaticketError(f"{source}: class folder {empty[0]} is empty; every class needs images")
    if classes != sorted(CLASSES):  # "cifar10" promises its 10 classes: an 11th or a missing (empty) one is refused
        extra, missing = sorted(set(classes) - set(CLASSES)), sorted(set(CLASSES) - set(classes))
        raise MetaticketError(f"{source}: CIFAR-10 image folders hold the 10 classes {', '.join(CLASSES)}; "
                              + (f"found extra {', '.join(extra)}" if extra else "")
                              + ("; " if extra and missing else "")
                              + (f"missing (or without images) {', '.join(missing)}" if missing else "")
                              + "; fix the folders or register the data as a dataset of its own")
    out: dict = {"classes": classes}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for _, img in sorted(found[split][cls], key=lambda p: p[0]):
                xs.append(img)
                ys.append(label)
        out[f"{split}_x"] = torch.stack(xs)
        out[f"{split}_y"] = torch.tensor(ys, dtype=torch.int64)
    return out


__all__ = ["CLASSES", "Cifar10", "load_cifar10", "read_batches", "read_image_folders"]


def _episodes(src: Source) -> ClassImages:
    """10 classes: a cross-domain test set of few-shot tasks only."""
    data = load_cifar10(src.root, src.cache_dir, progress=src.progress)
    images = resize_uint8(data.by_class("test"), src.image_size)
    return ClassImages(images, {"test": list(range(images.shape[0]))}, IMAGENET_MEAN, IMAGENET_STD)


def _classification(src: Source, augment: bool, seed: int) -> Classification:
    c = load_cifar10(src.root, src.cache_dir, progress=src.progress)
    train = TensorImages(resize_uint8(c.train_x, src.image_size), c.train_y, augment, seed)
    test = TensorImages(resize_uint8(c.test_x, src.image_size), c.test_y, False)
    return Classification(train, test, c.classes, CIFAR_MEAN, CIFAR_STD, src.image_size)


register_dataset(DatasetSpec("cifar10", channels=3, image_size=32, decoded_images=60_000, episodes=_episodes,
                             episode_splits=("test",), classification=_classification, classes=10))
