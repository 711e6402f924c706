"""Tiny-ImageNet-200 in its official layout, read in place from the folder, the .zip or a .tar.gz.

Layout: ``tiny-imagenet-200/{wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG, val/images/*.JPEG,
val/val_annotations.txt}`` (validation labels come from ``val_annotations.txt``). Decoded once into
uint8 tensors: ``train`` [200, T, 3, S, S] (the first T images of each class by index, T the smallest
class size) and ``val`` [200, V, 3, S, S].
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from metaticket.data.archive import is_archive, iter_files
from metaticket.data.cache import decode_once, images_of
from metaticket.data.classification import Classification, TensorImages
from metaticket.data.images import IMAGENET_MEAN, IMAGENET_STD, decode_rgb, resize_uint8
from metaticket.data.registry import ClassImages, DatasetSpec, Source, register_dataset
from metaticket.errors import MetaticketError

TOP = "tiny-imagenet-200"
SPLIT_FILE = Path(__file__).parent / "splits" / "tinyimagenet.json"


@dataclass(frozen=True)
class TinyImageNet:
    train: Tensor  # uint8 [classes, T, 3, S, S]
    val: Tensor  # uint8 [classes, V, 3, S, S]
    wnids: list[str]


def find_source(root: Path) -> Path | None:
    """The ``tiny-imagenet-200`` folder or an archive holding it, under ``root`` or ``root/tiny-imagenet``."""
    for base in (root, root / "tiny-imagenet"):
        if (base / "wnids.txt").is_file() and (base / "train").is_dir():
            return base
        if (base / TOP / "wnids.txt").is_file():
            return base / TOP
        if base.is_dir():
            archives = sorted(p for p in base.iterdir() if p.name.startswith(TOP) and is_archive(p))
            if archives:
                return archives[0]
    return None


def load_tinyimagenet(root: Path, cache_dir: Path, image_size: int = 64, progress: bool = True) -> TinyImageNet:
    source = find_source(root)
    missing = (f"Tiny-ImageNet not found under {root}: expected tiny-imagenet-200/ (or tiny-imagenet-200*.zip / "
               f".tar.gz) there or in {root / 'tiny-imagenet'}; set METATICKET_DATA or data.root to the folder "
               f"holding it")
    blob = decode_once(None if source is None else [source], missing,
                       lambda key: cache_dir / f"tinyimagenet-{key}-{image_size}px.pt",
                       lambda: _decode(source, image_size, progress), keys=("train", "val", "wnids"),
                       valid=lambda b: images_of("train", "val", dims=(5,), side=image_size)(b)
                       and b["train"].shape[0] == b["val"].shape[0] == len(b["wnids"]))
    return TinyImageNet(blob["train"], blob["val"], list(blob["wnids"]))


def _relative(name: str) -> str:
    """Path inside tiny-imagenet-200/ whatever the archive's top folder."""
    parts = name.split("/")
    return "/".join(parts[parts.index(TOP) + 1:]) if TOP in parts else name


def _decode(source: Path, size: int, progress: bool) -> dict:
    from tqdm import tqdm

    train: dict[str, list[tuple[int, Tensor]]] = {}
    val_images: dict[str, Tensor] = {}
    annotations = wnids_text = None
    wanted = re.compile(r"^(wnids\.txt|val/val_annotations\.txt|train/[^/]+/images/[^/]+\.jpe?g|"
                        r"val/images/[^/]+\.jpe?g)$", re.IGNORECASE)
    bar = tqdm(desc="decoding Tiny-ImageNet (once)", unit="img", disable=not progress)
    for name, raw in iter_files(source, lambda n: bool(wanted.match(_relative(n)))):
        rel = _relative(name)
        if rel == "wnids.txt":
            wnids_text = raw.decode()
        elif rel == "val/val_annotations.txt":
            annotations = raw.decode()
        elif rel.startswith("train/"):
            wnid = rel.split("/")[1]
            index = int(re.findall(r"_(\d+)\.", rel)[-1]) if re.search(r"_(\d+)\.", rel) else 0
            train.setdefault(wnid, []).append((index, decode_rgb(raw, size, f"{source}:{name}")))
            bar.update()
        else:
            val_images[rel.split("/")[-1]] = decode_rgb(raw, size, f"{source}:{name}")
            bar.update()
    bar.close()
    if wnids_text is None or annotations is None:
        raise MetaticketError(f"{source} lacks wnids.txt or val/val_annotations.txt; it is not a complete "
                              f"Tiny-ImageNet-200 download")
    wnids = sorted(w.strip() for w in wnids_text.split() if w.strip())
    empty = [w for w in wnids if not train.get(w)]
    if empty:
        raise MetaticketError(f"{source}: class {empty[0]} has no training images ({len(empty)} such classes); "
                              f"the download is incomplete")
    val: dict[str, list[tuple[str, Tensor]]] = {w: [] for w in wnids}
    where = f"{source}: val/val_annotations.txt"
    for n, line in enumerate(annotations.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")  # the official lines: file, wnid, then the box, separated by single tabs
        if len(fields) < 2 or fields[1] not in val:
            raise MetaticketError(f"{where} line {n} is not '<image>\\t<wnid>\\t...' with a wnid of wnids.txt "
                                  f"({line[:60]!r}); the annotations are damaged, download them again")
        if fields[0] not in val_images:
            raise MetaticketError(f"{where} line {n} names {fields[0]!r}, which is not in val/images/; the "
                                  f"validation set is incomplete, download it again")
        val[fields[1]].append((fields[0], val_images[fields[0]]))
    unlabelled = sorted(set(val_images) - {f for v in val.values() for f, _ in v})
    bare = [w for w in wnids if not val[w]]
    if val_images and (bare or unlabelled):
        what = f"class {bare[0]} has no validation image ({len(bare)} such classes)" if bare else \
            f"image {unlabelled[0]} has no annotation line ({len(unlabelled)} such images)"
        raise MetaticketError(f"{where}: {what}; the annotations do not match the images, download them again")
    t = min(len(v) for v in train.values())
    v_count = min(len(v) for v in val.values())
    return {
        "train": torch.stack([torch.stack([img for _, img in sorted(train[w], key=lambda p: p[0])[:t]])
                              for w in wnids]),
        "val": torch.stack([torch.stack([img for _, img in sorted(val[w], key=lambda p: p[0])[:v_count]])
                            for w in wnids]) if v_count else torch.empty(len(wnids), 0, 3, size, size,
                                                                       dtype=torch.uint8),
        "wnids": wnids,
    }


def load_split(wnids: list[str], split_file: Path = SPLIT_FILE) -> dict[str, list[int]]:
    """Row indices of the few-shot train / val / test classes (a committed, class-disjoint split)."""
    spec = json.loads(split_file.read_text())
    index = {w: i for i, w in enumerate(wnids)}
    missing = [w for k in ("train", "val", "test") for w in spec[k] if w not in index]
    if missing:
        raise MetaticketError(f"{split_file}: class {missing[0]} is not in the loaded Tiny-ImageNet "
                              f"({len(missing)} missing); the download differs from Tiny-ImageNet-200")
    return {k: [index[w] for w in spec[k]] for k in ("train", "val", "test")}


def _episodes(src: Source) -> ClassImages:
    data = load_tinyimagenet(src.root, src.cache_dir, progress=src.progress)
    images = resize_uint8(torch.cat([data.train, data.val], dim=1), src.image_size)
    return ClassImages(images, load_split(data.wnids), IMAGENET_MEAN, IMAGENET_STD)


def _classification(src: Source, augment: bool, seed: int) -> Classification:
    """Train on the training images, test on the official validation images (labels from val_annotations.txt)."""
    t = load_tinyimagenet(src.root, src.cache_dir, progress=src.progress)
    sets = []
    for images in (t.train, t.val):  # [200, M, 3, 64, 64]
        labels = torch.arange(images.shape[0]).repeat_interleave(images.shape[1])
        sets.append((resize_uint8(images.flatten(0, 1), src.image_size), labels))
    return Classification(TensorImages(*sets[0], augment, seed), TensorImages(*sets[1], False), t.wnids,
                          IMAGENET_MEAN, IMAGENET_STD, src.image_size)


register_dataset(DatasetSpec("tinyimagenet", channels=3, image_size=64, decoded_images=110_000, episodes=_episodes,
                             episode_splits=("train", "val", "test"), classification=_classification, classes=200))
