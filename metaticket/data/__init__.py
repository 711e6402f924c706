"""Few-shot datasets (one file each), the episode sampler, and the registry that builds split samplers."""

from __future__ import annotations

from pathlib import Path

from metaticket.data.episodes import EpisodeSampler, Tasks
from metaticket.data.images import IMAGENET_MEAN, IMAGENET_STD, resize_uint8
from metaticket.errors import MetaticketError

__all__ = ["DATASETS", "EpisodeSampler", "Tasks", "dataset_channels", "episode_samplers"]

# name -> (channels, native image size, splits it offers for episodes)
DATASETS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "omniglot": (1, 28, ("train", "val", "test")),
    "tinyimagenet": (3, 64, ("train", "val", "test")),
    "miniimagenet": (3, 84, ("train", "val", "test")),
    "cifar10": (3, 32, ("test",)),  # 10 classes: a cross-domain test set only
}


def dataset_channels(dataset: str) -> int:
    if dataset not in DATASETS:
        raise MetaticketError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return DATASETS[dataset][0]


def _class_images(dataset: str, root: Path, cache_dir: Path, image_size: int, download: bool, workers: int,
                  progress: bool):
    """(uint8 [classes, M, (C,) S, S], {split: rows}, mean, std) of ``dataset``."""
    if dataset == "omniglot":
        from metaticket.data.omniglot import load_omniglot, load_split

        data = load_omniglot(root, cache_dir, image_size=image_size, download=download, workers=workers,
                             progress=progress)
        return data.images, load_split(data.characters), 0.0, 1.0
    if dataset == "tinyimagenet":
        import torch

        from metaticket.data.tinyimagenet import load_split, load_tinyimagenet

        data = load_tinyimagenet(root, cache_dir, progress=progress)
        images = resize_uint8(torch.cat([data.train, data.val], dim=1), image_size)
        return images, load_split(data.wnids), IMAGENET_MEAN, IMAGENET_STD
    if dataset == "miniimagenet":
        from metaticket.data.miniimagenet import load_miniimagenet

        data = load_miniimagenet(root, cache_dir, image_size=image_size, progress=progress)
        return data.images, data.split, IMAGENET_MEAN, IMAGENET_STD
    if dataset == "cifar10":
        from metaticket.data.cifar10 import load_cifar10

        data = load_cifar10(root, cache_dir, progress=progress)
        images = resize_uint8(data.by_class("test"), image_size)
        return images, {"test": list(range(images.shape[0]))}, IMAGENET_MEAN, IMAGENET_STD
    raise MetaticketError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


def episode_samplers(dataset: str, root: str | Path, cache_dir: str | Path, *, ways: int, shots: int, queries: int,
                     image_size: int, rotations: bool, seed: int, val_seed: int, download: bool = True,
                     workers: int = 2, progress: bool = True) -> dict[str, EpisodeSampler]:
    """Samplers over the class-disjoint splits of ``dataset`` (train uses ``seed``, val/test ``val_seed``).

    ``rotations`` (extra classes rotated by 90/180/270 degrees) applies to Omniglot only.
    """
    images, split, mean, std = _class_images(dataset, Path(root), Path(cache_dir), image_size, download, workers,
                                             progress)
    return {
        name: EpisodeSampler(images, rows, ways=ways, shots=shots, queries=queries,
                             rotations=rotations and dataset == "omniglot",
                             seed=seed if name == "train" else val_seed, mean=mean, std=std)
        for name, rows in split.items()
    }
