"""Labelled image datasets for supervised training (the non-meta baselines).

Every dataset yields ``(uint8 [3, S, S], label)``; normalization happens on the device in the training loop.
CIFAR-10 and Tiny-ImageNet are decoded once into memory (see their readers); ImageNet is read from files.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from metaticket.data.registry import Classification, Source, get_dataset, list_datasets
from metaticket.errors import MetaticketError

__all__ = ["Classification", "TensorImages", "classification_data"]


class TensorImages(torch.utils.data.Dataset):
    """In-memory uint8 images [N, 3, S, S] with labels [N]; training items get pad-and-crop + flip.

    The augmentation of item ``i`` in epoch ``e`` depends only on ``(seed, e, i)`` (worker-independent).
    """

    def __init__(self, images: Tensor, labels: Tensor, augment: bool, seed: int = 0) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.pad = max(1, images.shape[-1] // 8)  # 4 pixels at 32x32, as in the papers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i]
        if self.augment:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            dy, dx, flip = torch.randint(0, 2 * self.pad + 1, (3,), generator=g).tolist()
            s = x.shape[-1]
            x = F.pad(x, (self.pad,) * 4)[:, dy:dy + s, dx:dx + s]
            if flip % 2:
                x = x.flip(-1)
        return x, int(self.labels[i])


def classification_data(dataset: str, root: Path, cache_dir: Path, image_size: int, augment: bool, seed: int,
                        progress: bool = True) -> Classification:
    """Train and test sets of ``dataset`` from its registered reader (e.g. the CIFAR-10 test set, the Tiny-ImageNet
    and ImageNet validation sets)."""
    spec = get_dataset(dataset)
    if spec.classification is None:
        raise MetaticketError(f"data.dataset = {dataset} is a few-shot dataset; supervised training takes one of: "
                              f"{', '.join(list_datasets(classification=True))}")
    return spec.classification(Source(Path(root), Path(cache_dir), image_size, progress=progress), augment, seed)
