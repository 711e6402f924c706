"""Meta-testing: mean accuracy over many tasks with a 95% confidence interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Score:
    """Accuracy in percent over ``tasks`` tasks; ``ci95 = 1.96 * std / sqrt(tasks)``."""

    accuracy: float
    ci95: float
    tasks: int
    loss: float


def summarize(accuracies: Tensor, losses: Tensor, percent: bool = True) -> Score:
    """accuracies, losses: [T] per-task values (accuracy as a fraction, shown in percent; with ``percent=False``
    another metric, e.g. a regression's MSE, kept as it is)."""
    acc = accuracies.double() * (100.0 if percent else 1.0)
    n = acc.numel()
    std = float(acc.std(unbiased=True)) if n > 1 else 0.0
    return Score(accuracy=float(acc.mean()), ci95=1.96 * std / math.sqrt(n), tasks=n, loss=float(losses.mean()))


def evaluate(learner, sampler, tasks: int, batch: int, device: torch.device, progress=None) -> Score:
    """Adapt on and score ``tasks`` tasks drawn from ``sampler`` (``batch`` at a time)."""
    accs: list[Tensor] = []
    losses: list[Tensor] = []
    done = 0
    while done < tasks:
        n = min(batch, tasks - done)
        loss, acc = learner.evaluate(sampler.sample(n).to(device))
        accs.append(acc.cpu())
        losses.append(loss.cpu())
        done += n
        if progress is not None:
            progress(n)
    return summarize(torch.cat(accs), torch.cat(losses), percent=_metric(learner) == "accuracy")


def _metric(learner) -> str:  # noqa: ANN001 (any learner with evaluate(); ours name their metric)
    """The metric ``learner.evaluate`` scores by: its objective's (``accuracy``, ``mse``), else accuracy."""
    return getattr(getattr(learner, "objective", None), "metric", "accuracy")


def meta_test(learner, sampler, tasks: int = 600, batch: int = 50, device: torch.device | str | None = None) -> dict:
    """Meta-test ``learner`` on ``tasks`` tasks of ``sampler`` (adapt on each support set, score its queries):
    ``{"accuracy": percent, "ci95": 1.96 std / sqrt(tasks), "tasks", "loss"}``; a learner whose objective is
    scored by another metric (``loss="mse"``: regression) reports it under its name (``"mse"``) instead of
    ``"accuracy"``. ``device``: the learner's own (its first parameter's) by default."""
    if tasks < 1:
        raise ValueError(f"tasks = {tasks}: score at least 1 task")
    if device is None:
        device = next(iter(learner.model.parameters())).device
    score = evaluate(learner, sampler, tasks, batch, torch.device(device))
    return {_metric(learner): score.accuracy, "ci95": score.ci95, "tasks": score.tasks, "loss": score.loss}
