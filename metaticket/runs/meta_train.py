"""Meta-training: outer steps in the shared training loop (:mod:`metaticket.runs.loop`), periodic validation on fixed
tasks, the best and last checkpoints, resume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from metaticket.config import Config, EvalConfig, MetaConfig
from metaticket.core.supermask import sparsity_report
from metaticket.data.episodes import EpisodeSampler
from metaticket.meta.evaluate import Score, evaluate
from metaticket.meta.learner import MetaLearner
from metaticket.runs.checkpoint import load_checkpoint, restoring, rng_state, set_rng_state
from metaticket.runs.loop import Callbacks, Due, Loop, Window, last_good
from metaticket.runs.monitor import Monitor, log_masks
from metaticket.runs.rundir import last_checkpoint


@dataclass(frozen=True)
class MetaPlan:
    """One meta-training run: how long and how wide (``meta.steps``, ``meta.meta_batch``), how often to validate
    on which tasks (the ``eval`` section) and how often to log and checkpoint (all in outer steps)."""

    meta: MetaConfig
    eval: EvalConfig
    checkpoint_every: int
    log_every: int

    @classmethod
    def of(cls, config: Config) -> MetaPlan:
        return cls(config.meta, config.eval, config.run.checkpoint_every, config.run.log_every)


def validate(learner: MetaLearner, sampler: EpisodeSampler, plan: MetaPlan, device: torch.device) -> Score:
    """Score on the same ``val_tasks`` tasks every time (the sampler is re-seeded)."""
    sampler.reseed(plan.eval.task_seed)
    return evaluate(learner, sampler, plan.eval.val_tasks, plan.eval.batch, device)


def meta_train(learner: MetaLearner, train: EpisodeSampler, val: EpisodeSampler, plan: MetaPlan, run_dir: Path,
               monitor: Monitor, device: torch.device, resume: bool = False, main: bool = True,
               callbacks: Callbacks | Sequence[Callbacks] | None = None) -> dict:
    """Train until ``plan.meta.steps``; keeps ``checkpoints/last.pt`` and the best-validation ``checkpoints/best.pt``.

    ``main=False`` (the other processes of a distributed run): the same steps, but no validation and no files.
    Returns a summary with the best validation accuracy and the mean time per meta-step.
    """
    ckpt_dir = run_dir / "checkpoints"
    key, metric = learner.objective.log_key, learner.objective.metric  # acc / accuracy, or e.g. mse / mse
    higher = learner.objective.higher_is_better  # the best checkpoint's metric: lower is better unless accuracy
    best = {metric: -1.0 if higher else float("inf"), "step": 0}
    state = None
    if resume:
        last = last_checkpoint(run_dir)
        state = load_checkpoint(last, map_location=device)
        with restoring(last):
            learner.load_state_dict(state["learner"])
            train.load_state_dict(state["sampler"])
            set_rng_state(state["rng"])
            best = dict(state["best"])
        monitor.print(f"resumed {run_dir} at step {learner.step}")
    loop = Loop(total=plan.meta.steps, start=learner.step, unit="step", monitor=monitor,
                title=f"meta-train {learner.method}", main=main, callbacks=callbacks,
                not_finite=lambda loss, when: f"the meta-loss became {loss} {when}; {last_good(ckpt_dir / 'last.pt')}; "
                                              f"lower meta.outer_lr or meta.inner_lr")
    if state is not None:
        loop.resume(state)

    def save(name: str) -> None:
        loop.save({"learner": learner.state_dict(), "sampler": train.state_dict(), "rng": rng_state(), "best": best},
                  ckpt_dir / name)

    def batches():
        while True:
            yield train.sample(plan.meta.meta_batch).to(device)

    def due(step: int) -> Due:
        end = step == plan.meta.steps
        return Due(log=step % plan.log_every == 0 or end, evaluate=main and (step % plan.eval.val_every == 0 or end),
                   checkpoint=step % plan.checkpoint_every == 0 or end)

    def log(window: Window) -> tuple[dict[str, float], dict[str, str]]:
        means = window.means()
        if key == "acc":
            means["acc"] *= 100  # percent, like val/acc and test accuracy (meta_step returns a fraction)
        means["ms_per_step"] = loop.ms_per_step()
        means["tasks_per_s"] = plan.meta.meta_batch * loop.timed / max(loop.busy, 1e-9)
        means["inner_lr"] = learner.inner_lr
        shown = f"{means[key]:.1f}" if key == "acc" else f"{means[key]:.3f}"
        return means, {"loss": f"{means['loss']:.3f}", key: shown}

    def evaluate(step: int) -> dict:
        score = validate(learner, val, plan, device)
        report = sparsity_report(learner.model)
        values = {key: score.accuracy, "ci95": score.ci95, "loss": score.loss, "sparsity": report["overall"]}
        values[f"best_{key}"] = (max if higher else min)(best[metric], score.accuracy)  # the best so far
        values.update({f"sparsity/{k}": v for k, v in report["layers"].items()})
        val.reseed(plan.eval.task_seed)  # where adaptation moves the weights, on fixed tasks
        change = learner.inner_change(val.sample(min(plan.eval.batch, 8)).to(device))
        values.update({f"inner_change/{k}": v for k, v in change.items()})
        monitor.log(step, "val", values)
        log_masks(monitor, learner.model, step)
        digits = 2 if key == "acc" else 4
        monitor.print(f"step {step}: val {key} {score.accuracy:.{digits}f} +- {score.ci95:.{digits}f}"
                      f"{'%' if key == 'acc' else ''}  sparsity {report['overall']:.3f}")
        return values

    def keep_best(step: int, values: dict) -> None:
        nonlocal best
        if (values[key] > best[metric]) if higher else (values[key] < best[metric]):
            best = {metric: values[key], "step": step}
            save("best.pt")

    loop.run(batches(), lambda tasks: learner.meta_step(tasks, sync=False), due, log, evaluate,
             lambda step: save("last.pt"), after_evaluate=keep_best)
    return loop.end({f"best_val_{metric}": best[metric], "best_step": best["step"], "ms_per_step": loop.ms_per_step(),
                     "steps": learner.step})
