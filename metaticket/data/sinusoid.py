"""Sinusoid regression tasks (MAML, Finn et al. 2017): each task is ``y = A sin(x - phase)`` with amplitude
``A ~ U[0.1, 5]``, phase ``~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; K support and Q query points per task."""

from __future__ import annotations

import math

import torch

from metaticket.data.episodes import SeededDraws
from metaticket.data.registry import DatasetSpec, register_dataset
from metaticket.tasks import Tasks


class SinusoidSampler(SeededDraws):
    """Draws batches of sinusoid tasks from its own seeded generator (like :class:`EpisodeSampler`).

    ``sample(b)`` gives support_x/support_y [b, shots, 1] and query_x/query_y [b, queries, 1], float32."""

    def __init__(self, shots: int, queries: int, seed: int = 0, amplitude: tuple[float, float] = (0.1, 5.0),
                 phase: tuple[float, float] = (0.0, math.pi), x_range: tuple[float, float] = (-5.0, 5.0)) -> None:
        if shots < 1 or queries < 1:
            raise ValueError(f"shots = {shots}, queries = {queries}: a task needs at least 1 of each")
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, float]) -> torch.Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(shape, generator=self.generator)

    def sample(self, batch: int) -> Tasks:
        amp = self._uniform((batch, 1, 1), self.amplitude)
        phase = self._uniform((batch, 1, 1), self.phase)
        x = self._uniform((batch, self.shots + self.queries, 1), self.x_range)
        y = amp * torch.sin(x - phase)
        k = self.shots
        return Tasks(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


def _samplers(shots: int, queries: int, seed: int, val_seed: int) -> dict[str, SinusoidSampler]:
    """Train tasks from ``seed``; validation and test tasks from ``val_seed`` (fixed tasks for every run), as
    for image episodes. Sinusoids have no class split: the three draw from the same distribution."""
    return {name: SinusoidSampler(shots, queries, seed=seed if name == "train" else val_seed + i)
            for i, name in enumerate(("train", "val", "test"))}


register_dataset(DatasetSpec("sinusoid", channels=1, image_size=1, decoded_images=0, generate=_samplers,
                             episode_splits=("train", "val", "test"), loss="mse", outputs=1))
