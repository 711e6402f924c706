"""ImageNet in its standard folder layout, decoded lazily (it does not fit in memory as tensors).

Layout under ``root`` (or ``root/imagenet``): ``train/<wnid>/*.JPEG`` and either ``val/<wnid>/*.JPEG``
(the usual re-sorted validation set) or a flat ``val/`` folder with Kaggle's ``LOC_val_solution.csv``
(``ImageId,PredictionString`` whose first token is the wnid) beside ``train/`` or in ``root``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from metaticket.data.classification import Classification
from metaticket.data.images import IMAGENET_MEAN, IMAGENET_STD, open_image
from metaticket.data.registry import DatasetSpec, Source, register_dataset
from metaticket.errors import MetaticketError

EXTENSIONS = (".jpeg", ".jpg", ".png")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def find_root(root: Path) -> Path | None:
    for base in (root, root / "imagenet", root / "ILSVRC" / "Data" / "CLS-LOC"):
        if (base / "train").is_dir() and (base / "val").is_dir():
            return base
    return None


def scan_imagenet(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(classes, train samples, val samples); a sample is (file, class index). Classes are sorted wnids."""
    base = find_root(root)
    if base is None:
        raise MetaticketError(f"ImageNet not found under {root}: expected train/<wnid>/ and val/ folders there or "
                              f"in {root / 'imagenet'}; set METATICKET_DATA or data.root")
    classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    if not classes:
        raise MetaticketError(f"{base / 'train'} has no class folders; expected train/<wnid>/*.JPEG")
    index = {c: i for i, c in enumerate(classes)}
    train = []
    for c in classes:
        files = _images(base / "train" / c)
        if not files:
            raise MetaticketError(f"class folder {base / 'train' / c} holds no images; remove it or add its images")
        train += [(f, index[c]) for f in files]
    val_dirs = [p for p in (base / "val").iterdir() if p.is_dir()]
    val: list[tuple[Path, int]] = []
    if val_dirs:
        for d in sorted(val_dirs):
            if d.name not in index:
                raise MetaticketError(f"{d} is a validation class that train/ does not have; the folders disagree")
            val += [(f, index[d.name]) for f in _images(d)]
    else:
        solution = next((p for p in (base / "LOC_val_solution.csv", base.parent / "LOC_val_solution.csv",
                                     root / "LOC_val_solution.csv") if p.is_file()), None)
        if solution is None:
            raise MetaticketError(f"{base / 'val'} is flat and no LOC_val_solution.csv gives its labels; sort it "
                                  f"into val/<wnid>/ folders or put LOC_val_solution.csv beside train/")
        with open(solution, newline="") as f:
            labels = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
        for file in _images(base / "val"):
            wnid = labels.get(file.stem)
            if wnid in index:
                val.append((file, index[wnid]))
    if not val:
        raise MetaticketError(f"{base / 'val'} holds no labelled images")
    return classes, train, val


class ImageFiles(torch.utils.data.Dataset):
    """Decodes image files on demand. Training: random-resized crop + flip; evaluation: resize + center crop.

    Items are (uint8 [3, size, size], label). The crop of item ``i`` in epoch ``e`` depends only on
    ``(seed, e, i)``, so results do not depend on the number of DataLoader workers and resume exactly.
    """

    def __init__(self, samples: list[tuple[Path, int]], size: int, train: bool, seed: int = 0) -> None:
        self.samples = samples
        self.size = size
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        img = open_image(Path(path), str(path), "RGB")
        if self.train:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            box = random_resized_box(img.size, g)
            img = img.resize((self.size, self.size), Image.BILINEAR, box=box)
            if torch.rand((), generator=g) < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            short = round(self.size * 256 / 224)
            w, h = img.size
            scale = short / min(w, h)
            img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(self.size, self.size, 3)
        return x.permute(2, 0, 1).contiguous(), label


def random_resized_box(size: tuple[int, int], g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop box (left, top, right, bottom) covering ``scale`` of the area with aspect in ``ratio``."""
    w, h = size
    area = w * h
    for _ in range(10):
        u = torch.rand(3, generator=g).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(math.log(ratio[0]) + u[1] * (math.log(ratio[1]) - math.log(ratio[0])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(u[2] * (w - cw + 1))
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            return left, top, left + cw, top + ch
    side = min(w, h)  # fallback: the central square
    return (w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side


def _classification(src: Source, augment: bool, seed: int) -> Classification:
    classes, train, val = scan_imagenet(src.root)
    return Classification(ImageFiles(train, src.image_size, train=augment, seed=seed),
                          ImageFiles(val, src.image_size, train=False), classes, IMAGENET_MEAN, IMAGENET_STD,
                          src.image_size)


register_dataset(DatasetSpec("imagenet", channels=3, image_size=224, decoded_images=0, classification=_classification,
                             classes=1000))
