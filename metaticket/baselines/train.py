"""Supervised training of a classifier: ``dense`` (SGD on weights), ``edgepopup`` (top-k supermask, only the
scores learn), ``slot`` (Slot Machines: only the slot scores learn) and ``randommask`` (a fixed random mask; the
weights train under it, or edge-popup's scores inside it). With ``train.rerand_every > 0`` a supermask run is IteRand:
it re-samples a fraction of the pruned weights on a schedule.

What one update is (:class:`SupervisedUpdate`), the batch order, evaluation and what each method learns; the run
around them (checkpoints, resume, logging) is :func:`metaticket.runs.supervised.train_supervised`. The batch order of
an epoch and each image's augmentation are functions of (seed, epoch, index), so runs resume exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaticket.baselines.methods import method_of
from metaticket.config import Config, TrainConfig
from metaticket.core.slots import slot_layers
from metaticket.core.supermask import IteRandSchedule, masked_layers, supermask_layers
from metaticket.distributed import SINGLE, Collective
from metaticket.errors import MetaticketError


@dataclass(frozen=True)
class TrainPlan:
    """One supervised run: its config's ``train`` section (method, optimizer, schedule, IteRand, evaluation) and the
    run's bookkeeping (checkpoint and log intervals in iterations, i.e. optimizer steps; loader workers; seed)."""

    train: TrainConfig
    checkpoint_every: int
    log_every: int
    workers: int
    seed: int

    @classmethod
    def of(cls, config: Config) -> TrainPlan:
        return cls(config.train, config.run.checkpoint_every, config.run.log_every, config.data.workers,
                   config.run.seed)


def trainable(model: nn.Module, method: str, randommask_learns: str = "weights") -> list[nn.Parameter]:
    """Mark what ``method`` learns (requires_grad) and return it: all parameters for ``dense`` and ``randommask``
    with ``randommask_learns = "weights"`` (the fixed masks are buffers), else only the scores."""
    kind = method_of(TrainConfig(method=method, randommask_learns=randommask_learns))  # type: ignore[arg-type]
    learned = []
    for name, p in model.named_parameters():
        learn = kind.learns_weights or name.endswith("scores")
        p.requires_grad_(learn)
        if learn:
            learned.append(p)
    if kind.slots:
        if not any(True for _ in slot_layers(model)):
            raise MetaticketError("train.method = slot needs a slot model; it was built without slot layers")
    elif kind.supermask and not any(True for _ in supermask_layers(model)):
        raise MetaticketError(f"train.method = {method} needs a supermask model; it was built dense")
    return learned


class EpochBatches(torch.utils.data.Sampler):
    """Index batches of one epoch: a permutation seeded by (seed, epoch), full batches only, from batch ``start``.

    With ``shard = (rank, world)`` it yields this process's contiguous slice of every global batch: the
    distributed sampler of a data-parallel run, which (unlike ``torch.utils.data.DistributedSampler``) can start
    mid-epoch, so distributed runs resume exactly too.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shard: tuple[int, int] = (0, 1)) -> None:
        if n < batch_size:
            raise MetaticketError(f"the training set has {n} images, fewer than train.batch_size = {batch_size}; "
                                  f"lower the batch size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        rank, world = shard
        self.lo, self.hi = rank * batch_size // world, (rank + 1) * batch_size // world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // self.batch_size - self.start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        for b in range(self.start, self.n // self.batch_size):
            yield order[b * self.batch_size:(b + 1) * self.batch_size][self.lo:self.hi].tolist()


def normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = False) -> Tensor:
    """uint8 [N, C, H, W] -> float [N, C, H, W] standardized per channel (optionally in NHWC memory order)."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    out = (x.float().div_(255) - m) / s
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: torch.utils.data.Dataset, mean: tuple[float, ...],
                        std: tuple[float, ...], batch: int, device: torch.device, workers: int = 0,
                        progress=None, channels_last: bool = False) -> dict:
    """Top-1 / top-5 accuracy (%) and loss over ``dataset`` in eval mode; ``ci95`` is the binomial 95% interval."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    correct1 = correct5 = 0
    loss = 0.0
    n = 0
    for x, y in loader:
        x, y = normalize(x.to(device, non_blocking=True), mean, std, channels_last), y.to(device, non_blocking=True)
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(1).sum())
        n += y.numel()
        if progress is not None:
            progress(y.numel())
    model.train(was_training)
    if n == 0:  # a score over no images is no score: say so instead of "top-1 0.0"
        raise MetaticketError("the test set holds no images; check the dataset's test (validation) split")
    p = correct1 / max(n, 1)
    return {"top1": 100 * p, "top5": 100 * correct5 / max(n, 1), "loss": loss / max(n, 1), "images": n,
            "ci95": 100 * 1.96 * math.sqrt(p * (1 - p) / max(n, 1))}


def param_counts(model: nn.Module) -> dict[str, int]:
    """``params_total``: every weight, bias and norm parameter; ``params_kept``: minus the pruned weights."""
    total = sum(p.numel() for name, p in model.named_parameters() if not name.endswith("scores"))
    total += sum(layer.weight_shape.numel() for _, layer in slot_layers(model))  # one chosen value per connection
    pruned = 0
    with torch.no_grad():
        for _, layer in masked_layers(model):
            pruned += int((layer.hard_mask() == 0).sum())
    return {"params_total": total, "params_kept": total - pruned}


def _lr_factor(plan: TrainPlan, total: int, per_epoch: int):
    warm = plan.train.warmup_epochs * per_epoch

    def factor(it: int) -> float:
        if it < warm:
            return (it + 1) / warm
        if plan.train.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (it - warm) / max(total - warm, 1)))

    return factor


class SupervisedUpdate:
    """What a supervised run updates, and one update: the model (under ``DistributedDataParallel`` when the
    ``collective`` has several processes), its SGD optimizer, lr schedule over ``total`` iterations and IteRand
    schedule. ``step`` trains on one batch; ``state_dict`` is what a checkpoint keeps of them."""

    def __init__(self, model: nn.Module, plan: TrainPlan, per_epoch: int, total: int, device: torch.device,
                 collective: Collective = SINGLE) -> None:
        t = plan.train
        params = trainable(model, t.method, t.randommask_learns)
        if t.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model, self.net, self.plan, self.collective = model, model, plan, collective
        if collective.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(plan, total, per_epoch))
        self.rerand = IteRandSchedule(t.rerand_every, t.rerand_rate, plan.seed + 1)

    def step(self, x: Tensor, y: Tensor, it: int) -> tuple[Tensor, float]:
        """One SGD step on (x [B, 3, S, S] normalized, y [B]) as iteration ``it`` (1-based), then IteRand when it
        counts iterations. Returns [loss, accuracy] of the whole batch (averaged over processes) and the fraction
        of weights IteRand re-drew."""
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.plan.train.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        changed = self.rerand(self.model, it) if self.plan.train.rerand_unit == "iterations" else None
        seen = torch.stack([loss.detach(), (logits.detach().argmax(1) == y).float().mean()])
        self.collective.all_reduce_sum([seen])  # the whole batch's loss and accuracy (mean of equal slices)
        return seen / self.collective.world, changed or 0.0

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rerand": self.rerand.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rerand.load_state_dict(state["rerand"])
