"""Seeded few-shot episode sampler over a class-indexed uint8 image tensor; it fills `metaticket.tasks.Tasks`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from metaticket.errors import MetaticketError
from metaticket.tasks import Tasks


class SeededDraws:
    """What every task sampler shares: its own ``generator``, restarted by :meth:`reseed` and saved with a run's
    checkpoint (:meth:`state_dict`), so resumed and validation draws repeat exactly."""

    generator: torch.Generator

    def reseed(self, seed: int) -> None:
        """Start the task draws again from ``seed`` (validation scores the same tasks every time)."""
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class EpisodeSampler(SeededDraws):
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



def class_images(dataset: Sequence, image_size: int | None = None, per_class: int | None = None,
                 progress: Callable[[int], object] | None = None) -> tuple[Tensor, list[int]]:
    """Images of a map-style dataset of ``(image, label)`` grouped by class: (uint8 [classes, M, C, S, S], labels).

    An image is a PIL image, a uint8 tensor [C, H, W] or a float tensor [C, H, W] in [0, 1] (what
    ``torchvision.datasets.ImageFolder`` or a dataset with ``ToTensor()`` gives); every image is resized to
    ``image_size`` (default: the first image's height; images must then be square). M is the smallest class
    size, or ``per_class``; each class keeps its first M images in dataset order."""
    import torchvision.transforms.functional as TF

    grouped: dict[int, list[Tensor]] = {}
    side = image_size
    for i in range(len(dataset)):
        image, label = dataset[i]
        x = TF.pil_to_tensor(image) if not isinstance(image, Tensor) else image
        if x.is_floating_point():
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        if x.dim() == 2:
            x = x.unsqueeze(0)
        side = side or int(x.shape[-2])
        if tuple(x.shape[-2:]) != (side, side):
            x = TF.resize(x, [side, side], antialias=True)
        grouped.setdefault(int(label), []).append(x)
        if progress is not None:
            progress(1)
    if not grouped:
        raise MetaticketError("the dataset is empty: no (image, label) items to group into classes")
    labels = sorted(grouped)
    m = min(len(grouped[c]) for c in labels) if per_class is None else per_class
    short = [c for c in labels if len(grouped[c]) < m]
    if short:
        raise MetaticketError(f"per_class = {m} but class {short[0]} has {len(grouped[short[0]])} images; "
                              f"lower per_class")
    channels = {int(grouped[c][0].shape[0]) for c in labels}
    if len(channels) > 1:
        raise MetaticketError(f"the images have {sorted(channels)} channels; convert them to one mode (e.g. RGB)")
    return torch.stack([torch.stack(grouped[c][:m]) for c in labels]), labels


def sampler_from_dataset(dataset: Sequence, *, ways: int, shots: int, queries: int, classes: list[int] | None = None,
                         image_size: int | None = None, seed: int = 0, mean: float | tuple[float, ...] = 0.0,
                         std: float | tuple[float, ...] = 1.0) -> EpisodeSampler:
    """An :class:`EpisodeSampler` over a map-style dataset of ``(image, label)`` (a torchvision dataset, an
    ``ImageFolder``, your own), restricted to the labels in ``classes`` (default: all). See :func:`class_images`."""
    images, labels = class_images(dataset, image_size)
    index = {c: i for i, c in enumerate(labels)}
    wanted = labels if classes is None else classes
    missing = [c for c in wanted if c not in index]
    if missing:
        raise MetaticketError(f"classes {missing[:5]} have no images in the dataset (its labels: {labels[:10]}...)")
    return EpisodeSampler(images, [index[c] for c in wanted], ways=ways, shots=shots, queries=queries, seed=seed,
                          mean=mean, std=std)
