"""Few-shot and supervised datasets (one file each, registered in ``registry``) and the episode sampler."""

from __future__ import annotations

from pathlib import Path

# each dataset file registers its DatasetSpec on import; a new dataset adds its import here
from metaticket.data import cifar10, imagenet, miniimagenet, omniglot, sinusoid, tinyimagenet  # noqa: F401
from metaticket.data.episodes import EpisodeSampler
from metaticket.data.registry import (
    DATASETS,
    ClassImages,
    DatasetSpec,
    Source,
    get_dataset,
    list_datasets,
    register_dataset,
)
from metaticket.errors import MetaticketError
from metaticket.tasks import Tasks

__all__ = ["DATASETS", "ClassImages", "DatasetSpec", "EpisodeSampler", "Source", "Tasks", "episode_samplers",
           "get_dataset", "list_datasets", "register_dataset"]


def episode_samplers(dataset: str, root: str | Path, cache_dir: str | Path, *, ways: int, shots: int, queries: int,
                     image_size: int, rotations: bool, seed: int, val_seed: int, download: bool = True,
                     workers: int = 2, progress: bool = True, split: str | None = None) -> dict[str, EpisodeSampler]:
    """Samplers over the class-disjoint splits of ``dataset`` (train uses ``seed``, val/test ``val_seed``).

    ``rotations`` (extra classes rotated by 90/180/270 degrees) applies to datasets that offer it (Omniglot).
    ``split`` names the class split of datasets that offer several (``DatasetSpec.class_splits``; Omniglot:
    ``vinyals``, the default, or ``maml``); None takes the dataset's default.
    """
    spec = get_dataset(dataset)
    if spec.generate is not None:  # generated tasks (sinusoid regression): no files, no classes
        return spec.generate(shots, queries, seed, val_seed)
    if spec.episodes is None:
        raise MetaticketError(f"data.dataset = {dataset} has no few-shot tasks; meta-learning takes one of: "
                              f"{', '.join(list_datasets(episodes=True))}")
    data = spec.episodes(Source(Path(root), Path(cache_dir), image_size, download, workers, progress,
                                spec.split_name(split)))
    return {
        name: EpisodeSampler(data.images, rows, ways=ways, shots=shots, queries=queries,
                             rotations=rotations and spec.rotations,
                             seed=seed if name == "train" else val_seed, mean=data.mean, std=data.std)
        for name, rows in data.splits.items()
    }
