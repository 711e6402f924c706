"""Meta-testing: mean accuracy over many tasks with a 95% confidence interval."""

from __future__ import annotations

import math
import warnings
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


def renamed_count(n_tasks: int | None, tasks: int | None) -> int | None:
    """``n_tasks``, or the old keyword ``tasks`` with a DeprecationWarning."""
    if tasks is None:
        return n_tasks
    warnings.warn("meta_test(tasks=N) is now meta_test(n_tasks=N)", DeprecationWarning, stacklevel=3)
    return tasks


def evaluate(learner, sampler, n_tasks: int, batch: int, device: torch.device, progress=None) -> Score:
    """Adapt on and score ``n_tasks`` tasks drawn from ``sampler`` (``batch`` at a time)."""
    accs: list[Tensor] = []
    losses: list[Tensor] = []
    done = 0
    while done < n_tasks:
        n = min(batch, n_tasks - done)
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


def meta_test(learner, sampler, n_tasks: int = 600, batch: int = 50, device: torch.device | str | None = None,
              tasks: int | None = None) -> dict:
    """Meta-test ``learner`` on ``n_tasks`` tasks of ``sampler`` (adapt on each support set, score its queries):
    ``{"accuracy": percent, "ci95": 1.96 std / sqrt(n_tasks), "tasks": n_tasks, "loss"}``; a learner whose objective
    is scored by another metric (``loss="mse"``: regression) reports it under its name (``"mse"``) instead of
    ``"accuracy"``. ``device``: the learner's own (its first parameter's) by default. ``tasks=`` is the old name of
    ``n_tasks`` (a batch of tasks is a :class:`~metaticket.tasks.Tasks` everywhere else)."""
    n_tasks = renamed_count(n_tasks, tasks)
    if n_tasks < 1:
        raise ValueError(f"n_tasks = {n_tasks}: score at least 1 task")
    if device is None:
        device = next(iter(learner.model.parameters())).device
    score = evaluate(learner, sampler, n_tasks, batch, torch.device(device))
    return {_metric(learner): score.accuracy, "ci95": score.ci95, "tasks": score.tasks, "loss": score.loss}
