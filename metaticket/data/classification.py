"""Labelled image datasets for supervised training (the non-meta baselines).

Every dataset yields ``(uint8 [3, S, S], label)``; normalization happens on the device in the training loop.
CIFAR-10 and Tiny-ImageNet are decoded once into memory (see their readers); ImageNet is read from files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from metaticket.data.images import IMAGENET_MEAN, IMAGENET_STD, resize_uint8
from metaticket.errors import MetaticketError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# name -> (classes, native image size)
CLASSIFICATION: dict[str, tuple[int, int]] = {"cifar10": (10, 32), "tinyimagenet": (200, 64), "imagenet": (1000, 224)}


@dataclass
class Classification:
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int


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
    """Train and test sets of ``dataset`` (CIFAR-10 test set; Tiny-ImageNet and ImageNet validation sets)."""
    if dataset == "cifar10":
        from metaticket.data.cifar10 import load_cifar10

        c = load_cifar10(root, cache_dir, progress=progress)
        train = TensorImages(resize_uint8(c.train_x, image_size), c.train_y, augment, seed)
        test = TensorImages(resize_uint8(c.test_x, image_size), c.test_y, False)
        return Classification(train, test, c.classes, CIFAR_MEAN, CIFAR_STD, image_size)
    if dataset == "tinyimagenet":
        from metaticket.data.tinyimagenet import load_tinyimagenet

        t = load_tinyimagenet(root, cache_dir, progress=progress)
        sets = []
        for images in (t.train, t.val):  # [200, M, 3, 64, 64]
            labels = torch.arange(images.shape[0]).repeat_interleave(images.shape[1])
            sets.append((resize_uint8(images.flatten(0, 1), image_size), labels))
        return Classification(TensorImages(*sets[0], augment, seed), TensorImages(*sets[1], False), t.wnids,
                              IMAGENET_MEAN, IMAGENET_STD, image_size)
    if dataset == "imagenet":
        from metaticket.data.imagenet import ImageFiles, scan_imagenet

        classes, train, val = scan_imagenet(root)
        return Classification(ImageFiles(train, image_size, train=augment, seed=seed),
                              ImageFiles(val, image_size, train=False), classes, IMAGENET_MEAN, IMAGENET_STD,
                              image_size)
    raise MetaticketError(f"data.dataset = {dataset} has no supervised split; use one of: "
                          f"{', '.join(CLASSIFICATION)}")
