"""What a task asks of the network: its loss and the metric it is scored by.

``cross_entropy`` (classification: labels [..., N], scored by accuracy, higher is better) and ``mse``
(regression: targets [..., N, D], scored by the mean squared error, lower is better) are built in; any other
loss is an :class:`Objective` built from a function of (predictions, targets) that returns per-row losses.
The inner loop, the query loss and evaluation all take the objective from here, on every path (factored, vmap,
loop), so a regression task runs wherever a classification task does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

RowLoss = Callable[[Tensor, Tensor], Tensor]  # (predictions [..., N, out], targets [..., N(, D)]) -> [..., N]


def _cross_entropy_rows(pred: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1), reduction="none").view(y.shape)


def _squared_error_rows(pred: Tensor, y: Tensor) -> Tensor:
    return (pred - y).square().mean(-1)


def _accuracy(pred: Tensor, y: Tensor) -> Tensor:
    return (pred.argmax(-1) == y).float().mean(-1)


@dataclass(frozen=True)
class Objective:
    """``rows(pred, y)``: per-row losses [..., N]; ``metric``: its name (``accuracy``, ``mse`` or ``loss``) and
    ``score(pred, y)``: per-task values [...] (accuracy as a fraction); ``higher_is_better`` orders checkpoints."""

    name: str
    rows: RowLoss
    metric: str
    score_rows: Callable[[Tensor, Tensor], Tensor] | None = None  # None: the metric is the mean loss
    higher_is_better: bool = False

    @property
    def log_key(self) -> str:
        """The metric's key in ``meta_step``'s output and the logs: ``acc`` for accuracy, else the metric's name."""
        return "acc" if self.metric == "accuracy" else self.metric

    def loss(self, pred: Tensor, y: Tensor) -> Tensor:
        """Mean loss over the rows of one task (pred [N, out], y [N(, D)]) -> []."""
        return self.rows(pred, y).mean()

    def task_losses(self, pred: Tensor, y: Tensor) -> Tensor:
        """Each task's mean loss: pred [B, N, out], y [B, N(, D)] -> [B]."""
        return self.rows(pred, y).mean(-1)

    def score(self, pred: Tensor, y: Tensor) -> Tensor:
        """Each task's metric over its rows: [..., N, out] -> [...]."""
        if self.score_rows is not None:
            return self.score_rows(pred, y)
        return self.rows(pred, y).mean(-1)


CROSS_ENTROPY = Objective("cross_entropy", _cross_entropy_rows, "accuracy", _accuracy, higher_is_better=True)
MSE = Objective("mse", _squared_error_rows, "mse")
OBJECTIVES = {o.name: o for o in (CROSS_ENTROPY, MSE)}


def objective(spec: str | Objective | RowLoss) -> Objective:
    """The objective named ``spec`` (``cross_entropy``, ``mse``), ``spec`` itself, or one made from a per-row loss
    function (scored by its mean loss)."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        if spec not in OBJECTIVES:
            raise ValueError(f"unknown loss {spec!r}; known: {', '.join(OBJECTIVES)} (or pass an Objective)")
        return OBJECTIVES[spec]
    if callable(spec):
        return Objective(getattr(spec, "__name__", "custom"), spec, "loss")
    raise ValueError(f"loss must be a name ({', '.join(OBJECTIVES)}), an Objective or a per-row loss function, "
                     f"got {type(spec).__name__}")
