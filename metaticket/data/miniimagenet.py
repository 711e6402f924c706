"""miniImageNet (Vinyals et al. 2016; Ravi & Larochelle's 64/16/20 class split, 600 images per class).

Two formats users have, both under ``root`` or ``root/miniimagenet`` (or ``root/mini-imagenet``):
- the pickles ``mini-imagenet-cache-{train,val,test}.pkl``: ``{"image_data": uint8 [N, 84, 84, 3],
  "class_dict": {wnid: [row, ...]}}``;
- the folder ``images/`` of JPEGs plus ``train.csv``, ``val.csv``, ``test.csv`` (``filename,label``).
Decoded once into uint8 [100, M, 3, S, S] with rows ordered train, val, test classes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from metaticket.data.cache import decode_once, images_of
from metaticket.data.images import IMAGENET_MEAN, IMAGENET_STD, decode_rgb, resize_uint8
from metaticket.data.registry import ClassImages, DatasetSpec, Source, register_dataset
from metaticket.data.safe_pickle import int_list, load_pickle, looks_like_html, uint8_array
from metaticket.errors import MetaticketError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MiniImageNet:
    images: Tensor  # uint8 [classes, M, 3, S, S]
    classes: list[str]
    split: dict[str, list[int]]  # rows of each split


def find_sources(root: Path) -> tuple[str, list[Path]] | None:
    """("pickle", 3 pickles) or ("csv", [images/, train.csv, val.csv, test.csv]), or None."""
    for base in (root, root / "miniimagenet", root / "mini-imagenet", root / "mini_imagenet"):
        pickles = [base / f"mini-imagenet-cache-{s}.pkl" for s in SPLITS]
        if all(p.is_file() for p in pickles):
            return "pickle", pickles
        csvs = [base / f"{s}.csv" for s in SPLITS]
        if (base / "images").is_dir() and all(p.is_file() for p in csvs):
            return "csv", [base / "images", *csvs]
    return None


def load_miniimagenet(root: Path, cache_dir: Path, image_size: int = 84, progress: bool = True) -> MiniImageNet:
    kind, sources = find_sources(root) or ("", None)
    build = (lambda: _from_pickles(sources, image_size)) if kind == "pickle" else \
        (lambda: _from_csv(sources, image_size, progress))
    missing = (f"miniImageNet not found under {root}: expected mini-imagenet-cache-{{train,val,test}}.pkl, or "
               f"images/ with train.csv, val.csv and test.csv, there or in {root / 'miniimagenet'}; set "
               f"METATICKET_DATA or data.root")
    blob = decode_once(sources, missing, lambda key: cache_dir / f"miniimagenet-{key}-{image_size}px.pt", build,
                       keys=("images", "classes", "split"),
                       valid=lambda b: images_of("images", dims=(5,), side=image_size)(b)
                       and b["images"].shape[0] == len(b["classes"]))
    return MiniImageNet(blob["images"], list(blob["classes"]), {k: list(v) for k, v in blob["split"].items()})


def _assemble(per_split: dict[str, dict[str, list[Tensor]]], size: int) -> dict:
    classes: list[str] = []
    split: dict[str, list[int]] = {}
    rows: list[list[Tensor]] = []
    for s in SPLITS:
        names = sorted(per_split[s])
        overlap = set(names) & set(classes)
        if overlap:
            raise MetaticketError(f"miniImageNet {s} split shares class {sorted(overlap)[0]} with another split; "
                                  f"the split files are mixed up")
        split[s] = list(range(len(classes), len(classes) + len(names)))
        classes += names
        rows += [per_split[s][n] for n in names]
    if not rows:
        raise MetaticketError("miniImageNet: no classes found in the split files")
    m = min(len(r) for r in rows)
    if m == 0:
        raise MetaticketError("miniImageNet: a class has no images")
    images = torch.stack([torch.stack(r[:m]) for r in rows])
    return {"images": resize_uint8(images, size), "classes": classes, "split": split}


def _from_pickles(pickles: list[Path], size: int) -> dict:
    per_split: dict[str, dict[str, list[Tensor]]] = {}
    for s, path in zip(SPLITS, pickles):
        data = load_pickle(path)
        if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
            raise MetaticketError(f"{path} has no 'image_data'/'class_dict': it is not a miniImageNet cache pickle")
        arr = torch.as_tensor(uint8_array(data["image_data"], str(path), "image_data", 4))  # [N, H, W, 3] uint8
        if arr.shape[-1] != 3 or arr.shape[0] == 0:
            raise MetaticketError(f"{path}: image_data has shape {tuple(arr.shape)}, expected uint8 [N, H, W, 3]")
        arr = arr.permute(0, 3, 1, 2)
        if not isinstance(data["class_dict"], dict):
            raise MetaticketError(f"{path}: class_dict is not a mapping of class -> image indices; the file is "
                                  f"damaged, download it again")
        per_split[s] = {str(c): [arr[i] for i in int_list(idx, str(path), f"class_dict[{c!r}]", arr.shape[0])]
                        for c, idx in data["class_dict"].items()}
    return _assemble(per_split, size)


def _from_csv(sources: list[Path], size: int, progress: bool) -> dict:
    from tqdm import tqdm

    images_dir, *csvs = sources
    per_split: dict[str, dict[str, list[Tensor]]] = {}
    for s, path in zip(SPLITS, csvs):
        head = path.read_bytes()[:1024]
        if looks_like_html(head):
            raise MetaticketError(f"{path} is an HTML page, not a CSV (a failed download); download it again")
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if rows and rows[0][:2] == ["filename", "label"]:
            rows = rows[1:]
        per_split[s] = {}
        for r in tqdm(rows, desc=f"decoding miniImageNet {s} (once)", disable=not progress):
            if len(r) < 2:
                raise MetaticketError(f"{path}: line {r!r} is not 'filename,label'")
            file = images_dir / r[0]
            inside = Path(r[0]).parts and not Path(r[0]).is_absolute() and ".." not in Path(r[0]).parts
            if not inside or not file.resolve().is_relative_to(images_dir.resolve()):
                raise MetaticketError(f"{path} names {r[0]!r}, a path outside {images_dir}; rows name image files "
                                      f"inside images/ (e.g. n0153282900000005.jpg)")
            if not file.is_file():
                raise MetaticketError(f"{path} names {r[0]}, which is not in {images_dir}")
            per_split[s].setdefault(r[1], []).append(decode_rgb(file.read_bytes(), size, str(file)))
    return _assemble(per_split, size)


def _episodes(src: Source) -> ClassImages:
    data = load_miniimagenet(src.root, src.cache_dir, image_size=src.image_size, progress=src.progress)
    return ClassImages(data.images, data.split, IMAGENET_MEAN, IMAGENET_STD)


register_dataset(DatasetSpec("miniimagenet", channels=3, image_size=84, decoded_images=60_000, episodes=_episodes,
                             episode_splits=("train", "val", "test")))
