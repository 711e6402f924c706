"""A supervised run: :class:`~metaticket.baselines.train.SupervisedUpdate` steps in the shared training loop
(:mod:`metaticket.runs.loop`), test evaluations every ``train.eval_every`` epochs and at the end, atomic checkpoints at
every epoch end and every ``checkpoint_every`` iterations, exact resume (log window included)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from metaticket.baselines.train import (
    EpochBatches,
    SupervisedUpdate,
    TrainPlan,
    evaluate_classifier,
    normalize,
    param_counts,
)
from metaticket.core.supermask import sparsity_report
from metaticket.distributed import SINGLE, Collective
from metaticket.runs.checkpoint import load_checkpoint, restoring, rng_state, set_rng_state
from metaticket.runs.loop import Callbacks, Due, Loop, Window, last_good
from metaticket.runs.monitor import Monitor, log_masks
from metaticket.runs.rundir import last_checkpoint


def train_supervised(model: nn.Module, train_set: torch.utils.data.Dataset, test_set: torch.utils.data.Dataset,
                     mean: tuple[float, ...], std: tuple[float, ...], plan: TrainPlan, run_dir: Path, monitor: Monitor,
                     device: torch.device, resume: bool = False, collective: Collective = SINGLE,
                     callbacks: Callbacks | Sequence[Callbacks] | None = None) -> dict:
    """Train ``model`` by ``plan.train.method``; evaluate on ``test_set`` every ``eval_every`` epochs and at the end.

    Writes ``checkpoints/last.pt``; returns the final test scores and timing. With a ``collective`` of several
    processes, each trains on its slice of every batch under ``DistributedDataParallel`` (gradients averaged;
    BatchNorm statistics are per process, DDP's default) and only rank 0 evaluates and writes. ``callbacks``
    (:class:`~metaticket.runs.loop.Callbacks`) see every step, log line, test evaluation and checkpoint.
    """
    t = plan.train
    main = collective.main
    sampler = EpochBatches(len(train_set), t.batch_size, plan.seed, (collective.rank, collective.world))
    per_epoch = len(sampler)
    total = min(t.epochs * per_epoch, t.max_iterations or t.epochs * per_epoch)
    update = SupervisedUpdate(model, plan, per_epoch, total, device, collective)
    ckpt = run_dir / "checkpoints" / "last.pt"
    it = 0
    history: list[dict] = []
    state = None
    if resume:
        last_checkpoint(run_dir)
        state = load_checkpoint(ckpt, map_location=device)
        with restoring(ckpt):
            update.load_state_dict(state)
            set_rng_state(state["rng"])
            it, history = int(state["iteration"]), list(state["history"])
        monitor.print(f"resumed {run_dir} at iteration {it} (epoch {it // per_epoch})")
    loop = Loop(total=total, start=it, unit="iteration", monitor=monitor, title=f"train {t.method}", main=main,
                callbacks=callbacks, not_finite=lambda loss, when: f"the training loss became {loss} {when}; "
                                                                   f"{last_good(ckpt)}; lower train.lr")
    if state is not None:
        loop.resume(state)
    final: dict = {}

    def batches():
        done = loop.step
        while True:
            epoch, start = divmod(done, per_epoch)
            sampler.set_epoch(epoch, start)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=plan.workers,
                                                 pin_memory=device.type == "cuda")  # non-blocking copies below
            for batch in loader:
                yield batch
                done += 1

    def step(batch: tuple[Tensor, Tensor]) -> dict[str, Tensor | float]:
        x, y = batch
        x = normalize(x.to(device, non_blocking=True), mean, std, t.channels_last)
        seen, changed = update.step(x, y.to(device, non_blocking=True), loop.step + 1)
        return {"loss": seen[0], "acc": seen[1], "rerandomized": changed}

    def due(i: int) -> Due:
        end, end_of_epoch = i == total, i % per_epoch == 0
        return Due(log=i % plan.log_every == 0 or end,
                   evaluate=main and (end or (end_of_epoch and (i // per_epoch) % t.eval_every == 0)),
                   checkpoint=end_of_epoch or i % plan.checkpoint_every == 0 or end)

    def log(window: Window) -> tuple[dict[str, float], dict[str, str]]:
        n, sums = max(window.n, 1), window.sums
        ms = loop.ms_per_step()
        values = {"loss": sums["loss"] / n, "acc": 100 * sums["acc"] / n, "lr": update.optimizer.param_groups[0]["lr"],
                  "ms_per_iter": ms, "images_per_s": t.batch_size * 1000 / ms if ms else 0.0,
                  "rerandomized": sums.get("rerandomized", 0.0), "epoch": loop.step / per_epoch}
        return values, {"loss": f"{values['loss']:.3f}", "acc": f"{values['acc']:.1f}"}

    def after_log(i: int) -> None:  # IteRand counted in epochs re-draws at each epoch's end
        if i % per_epoch == 0 and t.rerand_unit == "epochs":
            loop.window.add({"rerandomized": update.rerand(model, i // per_epoch) or 0.0})

    def evaluate(i: int) -> dict:
        nonlocal final
        epoch = math.ceil(i / per_epoch)
        bar = monitor.progress(len(test_set), "evaluate")
        score = evaluate_classifier(model, test_set, mean, std, t.eval_batch, device, plan.workers, bar.update,
                                    t.channels_last)
        bar.close()
        report = sparsity_report(model)
        values = {**score, "sparsity": report["overall"], **{f"sparsity/{k}": v for k, v in report["layers"].items()}}
        monitor.log(i, "test", values)
        log_masks(monitor, model, i)
        monitor.print(f"epoch {epoch}: test top-1 {score['top1']:.2f}% (+- {score['ci95']:.2f}), "
                      f"sparsity {report['overall']:.3f}")
        history.append({"epoch": epoch, "iteration": i, "top1": score["top1"], "top5": score["top5"]})
        final = score
        return values

    def checkpoint(i: int) -> None:
        loop.save({**update.state_dict(), "rng": rng_state(), "iteration": i, "history": history}, ckpt)

    if not resume:
        random.seed(plan.seed)
    started = time.perf_counter()
    model.train()
    loop.run(batches(), step, due, log, evaluate, checkpoint, after_log=after_log)
    if not main:
        return {"iterations": loop.step}
    if not final:  # a resumed run that had already finished: score it again
        final = evaluate(loop.step)
        checkpoint(loop.step)
    return loop.end({**final, "iterations": loop.step, "epochs": loop.step / per_epoch,
                     "ms_per_iter": loop.ms_per_step(), "train_minutes": (time.perf_counter() - started) / 60,
                     **param_counts(model), "sparsity": sparsity_report(model)["overall"]})
