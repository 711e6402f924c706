"""Few-shot datasets and the episode sampler."""

from __future__ import annotations

from pathlib import Path

from metaticket.data.episodes import EpisodeSampler, Tasks
from metaticket.data.omniglot import load_omniglot, load_split

__all__ = ["EpisodeSampler", "Tasks", "episode_samplers"]


def episode_samplers(dataset: str, root: str | Path, cache_dir: str | Path, *, ways: int, shots: int, queries: int,
                     image_size: int, rotations: bool, seed: int, val_seed: int, download: bool = True,
                     workers: int = 2, progress: bool = True) -> dict[str, EpisodeSampler]:
    """Train / val / test samplers of ``dataset`` with class-disjoint splits."""
    if dataset != "omniglot":
        raise ValueError(f"unknown dataset {dataset!r}; known: omniglot")
    data = load_omniglot(Path(root), Path(cache_dir), image_size=image_size, download=download, workers=workers,
                         progress=progress)
    split = load_split(data.characters)
    return {
        name: EpisodeSampler(data.images, rows, ways=ways, shots=shots, queries=queries, rotations=rotations,
                             seed=seed if name == "train" else val_seed)
        for name, rows in split.items()
    }
