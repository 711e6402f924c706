"""The meta-training loop: outer steps, periodic validation on fixed tasks, atomic checkpoints, resume."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from metaticket.checkpoint import load_checkpoint, restoring, rng_state, save_atomic, set_rng_state
from metaticket.config import Config, EvalConfig, MetaConfig
from metaticket.data.episodes import EpisodeSampler
from metaticket.errors import MetaticketError
from metaticket.meta.evaluate import Score, evaluate
from metaticket.meta.learner import MetaLearner
from metaticket.monitor import Monitor, log_masks
from metaticket.rundir import last_checkpoint
from metaticket.supermask import sparsity_report


@dataclass(frozen=True)
class Callbacks:
    """Functions the meta-training loop calls (rank 0 only), for code that drives a run from Python:
    ``on_log(step, values)`` with the train averages of each log line, ``on_validate(step, values)`` with each
    validation's accuracy, CI, loss and sparsity, ``on_checkpoint(step, path)`` after each checkpoint write."""

    on_log: Callable[[int, dict], object] | None = None
    on_validate: Callable[[int, dict], object] | None = None
    on_checkpoint: Callable[[int, Path], object] | None = None


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
               callbacks: Callbacks | None = None) -> dict:
    """Train until ``plan.meta.steps``; keeps ``checkpoints/last.pt`` and the best-validation ``checkpoints/best.pt``.

    ``main=False`` (the other processes of a distributed run): the same steps, but no validation and no files.
    Returns a summary with the best validation accuracy and the mean time per meta-step.
    """
    ckpt_dir = run_dir / "checkpoints"
    key, metric = learner.objective.log_key, learner.objective.metric  # acc / accuracy, or e.g. mse / mse
    higher = learner.objective.higher_is_better  # the best checkpoint's metric: lower is better unless accuracy
    best = {metric: -1.0 if higher else float("inf"), "step": 0}
    window: dict[str, float] = {}  # sums of the step outputs since the last train log line
    window_n = 0
    if resume:
        last = last_checkpoint(run_dir)
        state = load_checkpoint(last, map_location=device)
        with restoring(last):
            learner.load_state_dict(state["learner"])
            train.load_state_dict(state["sampler"])
            set_rng_state(state["rng"])
            best = dict(state["best"])
            window, window_n = state.get("window", ({}, 0))
        monitor.print(f"resumed {run_dir} at step {learner.step}")

    calls = callbacks or Callbacks()

    def save(name: str) -> None:
        if not main:
            return
        # the log window too, so a resumed run logs the same train averages as an uninterrupted one
        save_atomic({"learner": learner.state_dict(), "sampler": train.state_dict(), "rng": rng_state(),
                     "best": best, "window": (window, window_n)}, ckpt_dir / name)
        if calls.on_checkpoint is not None:
            calls.on_checkpoint(learner.step, ckpt_dir / name)

    step_time = 0.0
    timed_steps = 0
    bar = monitor.progress(plan.meta.steps, f"meta-train {learner.method}", initial=learner.step)
    pending: dict[str, torch.Tensor | float] = {}  # step outputs not yet read from the device (see read_window)

    def read_window(first_step: int) -> float:
        """Fold the pending step outputs into ``window`` as floats: the one device sync between log lines. A
        non-finite loss stops the run here, before anything of these steps is validated or saved."""
        nonlocal pending
        t0 = time.perf_counter()  # the seconds spent waiting are returned
        values = {k: float(v) for k, v in pending.items()}
        wait = time.perf_counter() - t0
        pending = {}
        for k, v in values.items():
            window[k] = window.get(k, 0.0) + v
        if not all(v == v and abs(v) != float("inf") for v in values.values()):
            when = f"at step {first_step}" if first_step == learner.step else \
                f"between steps {first_step} and {learner.step}"
            raise MetaticketError(f"the meta-loss became {window.get('loss')} {when}; the last good checkpoint is "
                                  f"{ckpt_dir / 'last.pt'}; lower meta.outer_lr or meta.inner_lr")
        return wait

    first_pending = learner.step + 1
    while learner.step < plan.meta.steps:
        tasks = train.sample(plan.meta.meta_batch).to(device)
        t0 = time.perf_counter()
        out = learner.meta_step(tasks, sync=False)
        dt = time.perf_counter() - t0
        if learner.step > 1:  # the first step pays one-off warm-up costs
            step_time += dt
            timed_steps += 1
        for k, v in out.items():  # summed on the device in float64, like the float sums they replace
            pending[k] = pending.get(k, 0.0) + (v.to(torch.float64) if isinstance(v, torch.Tensor) else v)
        window_n += 1
        bar.update(1)
        step = learner.step
        due_log = step % plan.log_every == 0 or step == plan.meta.steps
        due_val = main and (step % plan.eval.val_every == 0 or step == plan.meta.steps)
        due_save = step % plan.checkpoint_every == 0 or step == plan.meta.steps
        if due_log or due_val or due_save:
            # on a GPU the steps queued since the last read finish here: their time counts as step time
            wait = read_window(first_pending)
            step_time += wait if timed_steps else 0.0
            first_pending = step + 1
        if due_log:
            means = {k: v / window_n for k, v in window.items()}
            if key == "acc":
                means["acc"] *= 100  # percent, like val/acc and test accuracy (meta_step returns a fraction)
            means["ms_per_step"] = 1000.0 * step_time / max(timed_steps, 1)
            means["tasks_per_s"] = plan.meta.meta_batch * timed_steps / max(step_time, 1e-9)
            means["inner_lr"] = learner.inner_lr
            monitor.log(step, "train", means)
            if main and calls.on_log is not None:
                calls.on_log(step, means)
            bar.set_postfix(loss=f"{means['loss']:.3f}", **{key: f"{means[key]:.1f}" if key == "acc" else
                                                           f"{means[key]:.3f}"})
            window, window_n = {}, 0
        if due_val:
            score = validate(learner, val, plan, device)
            report = sparsity_report(learner.model)
            values = {key: score.accuracy, "ci95": score.ci95, "loss": score.loss, "sparsity": report["overall"]}
            values.update({f"sparsity/{k}": v for k, v in report["layers"].items()})
            val.reseed(plan.eval.task_seed)  # where adaptation moves the weights, on fixed tasks
            change = learner.inner_change(val.sample(min(plan.eval.batch, 8)).to(device))
            values.update({f"inner_change/{k}": v for k, v in change.items()})
            monitor.log(step, "val", values)
            if calls.on_validate is not None:
                calls.on_validate(step, values)
            log_masks(monitor, learner.model, step)
            unit = "%" if key == "acc" else ""
            monitor.print(f"step {step}: val {key} {score.accuracy:.{2 if key == 'acc' else 4}f} +- "
                          f"{score.ci95:.{2 if key == 'acc' else 4}f}{unit}  sparsity {report['overall']:.3f}")
            if (score.accuracy > best[metric]) if higher else (score.accuracy < best[metric]):
                best = {metric: score.accuracy, "step": step}
                save("best.pt")
        if due_save:
            save("last.pt")
    bar.close()
    return {f"best_val_{metric}": best[metric], "best_step": best["step"],
            "ms_per_step": 1000.0 * step_time / max(timed_steps, 1), "steps": learner.step}
