"""Seeded few-shot episode sampler over a class-indexed uint8 image tensor; it fills `metaticket.tasks.Tasks`."""

from __future__ import annotations

import torch
from torch import Tensor

from metaticket.errors import MetaticketError
from metaticket.tasks import Tasks


class EpisodeSampler:
    """Samples ``ways``-way ``shots``-shot tasks with ``queries`` query images per class.

    ``images``: uint8 [R, M, H, W] or [R, M, C, H, W] (R source rows, M images each);
    ``rows``: the source rows of this split; with ``rotations`` each row also gives classes rotated by
    90/180/270 degrees (the MAML Omniglot convention). Classes never leave ``rows``, so splits stay disjoint.
    ``mean``/``std`` (scalars or per channel) normalize the float images after scaling to [0, 1].
    """

    def __init__(self, images: Tensor, rows: list[int], *, ways: int, shots: int, queries: int,
                 rotations: bool = False, seed: int = 0, mean: float | tuple[float, ...] = 0.0,
                 std: float | tuple[float, ...] = 1.0) -> None:
        per_class = images.shape[1]
        n_classes = len(rows) * (4 if rotations else 1)
        if shots + queries > per_class:
            raise MetaticketError(f"data.shots + data.queries = {shots + queries} but each class has only "
                                  f"{per_class} images; lower data.shots or data.queries")
        if ways > n_classes:
            raise MetaticketError(f"data.ways = {ways} but this split has only {n_classes} classes; "
                                  f"lower data.ways")
        self.images = images
        self.rows = torch.as_tensor(rows, dtype=torch.long)
        self.ways, self.shots, self.queries = ways, shots, queries
        self.rotations = rotations
        self.n_classes = n_classes
        # per-channel statistics broadcast over [..., C, H, W]
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch: int) -> Tasks:
        """``batch`` tasks drawn with this sampler's generator."""
        g = self.generator
        ways, per = self.ways, self.shots + self.queries
        classes = torch.stack([torch.randperm(self.n_classes, generator=g)[:ways] for _ in range(batch)])  # [B, W]
        rows = self.rows[classes % len(self.rows)]
        rot = classes // len(self.rows)  # 0..3 quarter turns (always 0 without rotations)
        picks = torch.rand(batch, ways, self.images.shape[1], generator=g).argsort(-1)[..., :per]  # [B, W, per]
        x = self.images[rows.unsqueeze(-1), picks]  # [B, W, per, (C,) H, W]
        if x.dim() == 5:
            x = x.unsqueeze(3)  # grayscale: add the channel axis
        if self.rotations:
            for k in (1, 2, 3):
                sel = rot == k
                if sel.any():
                    x[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
        x = (x.float() / 255.0 - self.mean) / self.std
        labels = torch.arange(ways).view(1, ways, 1)
        s, q = self.shots, self.queries
        shape = x.shape[-3:]
        return Tasks(
            support_x=x[:, :, :s].reshape(batch, ways * s, *shape),
            support_y=labels.expand(batch, ways, s).reshape(batch, ways * s),
            query_x=x[:, :, s:].reshape(batch, ways * q, *shape),
            query_y=labels.expand(batch, ways, q).reshape(batch, ways * q),
        )

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
