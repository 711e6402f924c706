"""The dataset registry: one ``DatasetSpec`` per dataset, registered by the file that reads it.

A spec says what the rest of the library needs to know before touching the data (channels, native image side,
which splits offer few-shot episodes, how many images are decoded into memory) and how to read it: ``episodes``
returns class-indexed images for the episode sampler, ``classification`` the train/test sets for supervised
training. Adding a dataset is one file that defines its readers and calls ``register_dataset`` (docs/own-data.md,
"Adding a dataset"), plus one import line in ``metaticket/data/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from metaticket.errors import MetaticketError

Stats = float | tuple[float, float, float]


@dataclass(frozen=True)
class Source:
    """Where and how to read a dataset: its folder, the decode cache and the image side to decode at."""

    root: Path
    cache_dir: Path
    image_size: int
    download: bool = True
    workers: int = 2
    progress: bool = True
    split: str | None = None  # the class split (DatasetSpec.class_splits); None: the dataset's default


@dataclass(frozen=True)
class ClassImages:
    """Images grouped by class for episodes: ``images`` uint8 [classes, M, (C,) S, S], ``splits`` the class rows
    of each split, and the per-channel ``mean``/``std`` (of [0, 1] pixels) that inputs are normalized with."""

    images: Tensor
    splits: dict[str, list[int]]
    mean: Stats = 0.0
    std: Stats = 1.0


@dataclass
class Classification:
    """What a supervised reader returns: train and test sets of ``(uint8 [3, S, S], label)``, the class names and
    the per-channel ``mean``/``std`` inputs are normalized with."""

    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset. ``episodes(source)`` and ``classification(source, augment, seed)`` are None when the dataset
    offers no few-shot tasks or no supervised split."""

    name: str
    channels: int  # of the images the models see
    image_size: int  # native side; data.image_size: null uses it
    decoded_images: int  # images decoded into memory (for the memory check); 0 when read from files
    episodes: Callable[[Source], ClassImages] | None = None
    episode_splits: tuple[str, ...] = ()  # the splits ``episodes`` returns
    classification: Callable[[Source, bool, int], Classification] | None = None
    classes: int = 0  # supervised classes (0 without a supervised split)
    rotations: bool = False  # offers rotated copies of classes as extra classes (data.rotations)
    class_splits: tuple[str, ...] = ()  # named class splits ``episodes`` offers (data.split), the default first;
    # () when the dataset has one fixed split
    # generated tasks (regression): generate(shots, queries, seed, val_seed) -> {"train"|"val"|"test": sampler}
    generate: Callable[[int, int, int, int], dict] | None = None
    loss: str = "cross_entropy"  # the tasks' objective (metaticket.meta.objective): cross_entropy or mse
    outputs: int = 0  # network outputs; 0: one per class (data.ways)

    def split_name(self, split: str | None) -> str | None:
        """The class split a run of this dataset uses for ``data.split = split`` (None: the default), or a one-line
        error naming the splits the dataset has."""
        if not self.class_splits:
            if split is not None:
                raise MetaticketError(f"data.split = {split!r}, but {self.name} has one fixed class split; leave "
                                      f"data.split unset (null)")
            return None
        if split is None:
            return self.class_splits[0]
        if split not in self.class_splits:
            raise MetaticketError(f"data.split = {split!r} is not a class split of {self.name}; use one of: "
                                  f"{', '.join(self.class_splits)}")
        return split


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register ``spec`` under ``spec.name``; registering a name again replaces it (re-run notebook cells)."""
    if spec.episodes is None and spec.classification is None and spec.generate is None:
        raise ValueError(f"dataset {spec.name!r} needs an episodes, generate or classification reader")
    if (spec.episodes is not None or spec.generate is not None) and not spec.episode_splits:
        raise ValueError(f"dataset {spec.name!r} has an episodes reader but names no episode_splits")
    DATASETS[spec.name] = spec
    return spec


def list_datasets(*, episodes: bool = False, classification: bool = False) -> list[str]:
    """Registered names; ``episodes``/``classification`` keep those offering few-shot tasks / a supervised split."""
    return sorted(name for name, s in DATASETS.items()
                  if (not episodes or s.episodes is not None or s.generate is not None)
                  and (not classification or s.classification is not None))


def get_dataset(name: str) -> DatasetSpec:
    """The spec of ``name``, or a one-line error naming the registered datasets."""
    if name not in DATASETS:
        raise MetaticketError(f"data.dataset = {name!r} is unknown; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]
