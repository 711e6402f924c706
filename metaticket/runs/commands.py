"""Runs as functions: meta-train, meta-test, train, evaluate, export and sweep, each taking a Config (or a run
folder) and returning its result as a dict. ``cli`` is a thin parser over these; scripts and notebooks call them
directly (the benchmarks do)::

    from metaticket.config import load_config
    from metaticket.runs.commands import Context, meta_test, meta_train

    ctx = Context.from_environment(os.environ)        # METATICKET_DATA / METATICKET_CACHE, as run.py reads them
    summary = meta_train(load_config("configs/omniglot/quickstart.yaml", ["meta.steps=100"]), ctx)
    print(meta_test(Path(summary["run_dir"]), ctx, n_tasks=600))

Nothing here reads argv or the environment: what a run takes from outside its config comes in a ``Context``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from metaticket.baselines.methods import method_label, method_of
from metaticket.baselines.train import TrainPlan, evaluate_classifier, param_counts
from metaticket.config import Config, load_config
from metaticket.core.supermask import sparsity_report
from metaticket.data import EpisodeSampler, episode_samplers, get_dataset, list_datasets
from metaticket.data.classification import Classification, classification_data
from metaticket.distributed import SINGLE, Collective
from metaticket.errors import READ_ONLY_ERRNOS, MetaticketError
from metaticket.hardware import keep_freed_memory
from metaticket.meta.evaluate import evaluate as evaluate_tasks
from metaticket.meta.evaluate import renamed_count
from metaticket.runs.checkpoint import check_checkpoint, load_checkpoint, read_json, write_text_atomic
from metaticket.runs.factory import (
    build_classifier,
    build_learner,
    build_network,
    check_model_name,
    from_slot_run,
    image_size,
    resolve,
    slot_run_config,
)
from metaticket.runs.loop import Callbacks
from metaticket.runs.meta_train import MetaPlan
from metaticket.runs.meta_train import meta_train as meta_train_loop
from metaticket.runs.monitor import Monitor
from metaticket.runs.rundir import check_resumable, create_run_dir, run_in_claimed_dir, saved_config
from metaticket.runs.supervised import train_supervised
from metaticket.runs.sweep import grid_table, plot_grid, seed_table


@dataclass(frozen=True)
class Context:
    """What a run takes from outside its config.

    ``cache_dir``: decoded-dataset cache and download folder. ``data_root``: where datasets live when the config's
    ``data.root`` is null (None: ``cache_dir/data``). ``group``: the torchrun process group (one process by
    default) and ``device`` this process's device in it (None: ``run.device``). ``quiet``: no progress bars.
    """

    cache_dir: Path
    data_root: Path | None = None
    group: Collective = SINGLE
    device: torch.device | None = None
    quiet: bool = True

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], quiet: bool = True) -> Context:
        """``$METATICKET_CACHE`` (default ``~/.cache/metaticket``) and ``$METATICKET_DATA`` of ``environ``."""
        cache = environ.get("METATICKET_CACHE") or str(Path.home() / ".cache" / "metaticket")
        data = environ.get("METATICKET_DATA")
        return cls(Path(cache).expanduser(), Path(data).expanduser() if data else None, quiet=quiet)


def data_root(config: Config, ctx: Context) -> Path:
    """``data.root``, else the context's data root (``$METATICKET_DATA``), else the download folder in the cache."""
    if config.data.root:
        return Path(config.data.root).expanduser()
    return ctx.data_root if ctx.data_root is not None else ctx.cache_dir / "data"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetaticketError(f"run.device = {name} but CUDA is not available here; use run.device=auto or cpu")
    return torch.device(name)


def samplers(config: Config, ctx: Context, dataset: str | None = None) -> dict[str, EpisodeSampler]:
    """Episode samplers of the config's dataset (or of ``dataset``, at the config's image size)."""
    d = config.data
    return episode_samplers(dataset or d.dataset, data_root(config, ctx), ctx.cache_dir, ways=d.ways, shots=d.shots,
                            queries=d.queries, image_size=image_size(config), rotations=d.rotations,
                            seed=config.run.seed, val_seed=config.eval.task_seed, download=d.download,
                            workers=d.workers, progress=not ctx.quiet,
                            split=d.split if dataset in (None, d.dataset) else None)


def machine_memory() -> int:
    """Physical memory of this machine in bytes (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(config: Config, dataset: str | None = None, memory: int | None = None) -> None:
    """Refuse, before anything is decoded or allocated, a config whose decoded images plus one batch of float
    inputs need more than 80% of this machine's memory (``data.image_size``, ``meta.meta_batch``, ...)."""
    memory = machine_memory() if memory is None else memory
    d = config.data
    name = dataset or d.dataset
    side = image_size(config)
    meta = config.run.kind == "meta"
    spec = get_dataset(name)
    pixels = spec.channels * side * side
    if meta:
        batch = max(config.meta.meta_batch, config.eval.batch) * d.ways * (d.shots + d.queries)
        what = "meta.meta_batch or eval.batch tasks x data.ways x (shots + queries)"
    else:
        batch, what = max(config.train.batch_size, config.train.eval_batch), "train.batch_size or train.eval_batch"
    need = spec.decoded_images * pixels + 3 * 4 * batch * pixels  # uint8 images; float batch, 2 copies+grad
    if memory and need > 0.8 * memory:
        raise MetaticketError(f"data.image_size = {side} with batches of {batch} images ({what}) needs about "
                              f"{need / 2**30:.1f} GiB for decoded images and one batch, more than 80% of this "
                              f"machine's {memory / 2**30:.1f} GiB; lower data.image_size or the batch")


def check_forward(model: torch.nn.Module, config: Config, channels: int, device: torch.device) -> None:
    """One forward pass on two blank images of the config's size, without side effects (eval mode, global RNG
    kept): an image size the architecture cannot take is refused in one line before the run folder is written."""
    side = image_size(config)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            model(torch.zeros(2, channels, side, side, device=device))
    except (RuntimeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:140] if str(e).strip() else type(e).__name__
        raise MetaticketError(f"model.name = {config.model.name} cannot take {side} x {side} images (data.image_size) "
                              f"({first}); use a larger data.image_size or another model") from None
    finally:
        model.train(was_training)


def setup(config: Config) -> torch.device:
    if config.run.malloc == "keep":
        keep_freed_memory()
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)
    try:  # nothing here draws from numpy, but user code and libraries may; checkpoints hold its state too
        import numpy as np

        np.random.seed(config.run.seed)
    except ImportError:
        pass
    return resolve_device(config.run.device)


def expect_kind(config: Config, kind: str, command: str) -> None:
    if config.run.kind != kind:
        other = "meta-train" if config.run.kind == "meta" else "train"
        raise MetaticketError(f"this config has run.kind = {config.run.kind}; run it with `run.py {other}`, "
                              f"or set run.kind = {kind} for {command}")


def load_weights(target, state: dict, run_dir: Path) -> None:
    """``target.load_state_dict(state)`` with a one-line error when the checkpoint is of another architecture."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise MetaticketError(f"{run_dir}: the checkpoint does not fit the model of its config.yaml "
                              f"({str(e).splitlines()[0][:120]}); restore the model settings it was trained with, or "
                              f"train a new run") from None


def _claimed(start: Callable[[Path], dict], run_dir: Path, resume: bool, group: Collective) -> dict:
    """Run ``start`` in a claimed folder (or the resumed ``run_dir``); its summary with ``run_dir``."""
    run_dir = run_in_claimed_dir(start, run_dir, resume, group)
    group.barrier()
    return {**(read_json(run_dir / "train_summary.json") or {}), "run_dir": str(run_dir)}


def _finish(loop: Callable[[], dict], run_dir: Path, monitor: Monitor, say: bool, line: Callable[[dict], str]) -> dict:
    """Run the training ``loop``, close the monitor, and write (rank 0) and announce the summary it returns."""
    try:
        summary = loop()
    finally:
        monitor.close()
    if monitor.write:
        write_text_atomic(run_dir / "train_summary.json", json.dumps(summary, indent=2))
    if say:
        print(f"{line(summary)}; run folder {run_dir}", file=sys.stderr)
    return summary


def meta_train(config: Config, ctx: Context, resume: bool = False,
               callbacks: Callbacks | Sequence[Callbacks] | None = None) -> dict:
    """Meta-train ``config`` (run.kind: meta) into a new folder ``run.out_dir/run.name`` (``-1``, ``-2``, ... when
    that one holds a run), or continue that folder's last checkpoint with ``resume``. Returns the training summary
    (steps, ms per step, best validation accuracy and step) with ``run_dir``, the folder it wrote. ``callbacks``
    (:class:`~metaticket.runs.loop.Callbacks`) see every log line, validation and checkpoint as it happens."""
    expect_kind(config, "meta", "meta-train")
    return _claimed(lambda d: meta_train_in(config, d, ctx, resume, callbacks),
                    Path(config.run.out_dir) / config.run.name, resume, ctx.group)


def _prepare(config: Config, run_dir: Path, ctx: Context, resume: bool) -> tuple[Config, dict | None, torch.device,
                                                                              bool]:
    """What every training process starts from: the resolved config, the checkpoint a resume continues (None for a
    new run), this process's device (seeded, threads set) and whether it stays quiet (all but rank 0 do)."""
    meta = config.run.kind == "meta"
    state, config = check_resumable(run_dir, config, resolve) if resume else (None, resolve(config))
    device = setup(config)
    world = ctx.group.world
    if world > 1:
        device = ctx.device or resolve_device(config.run.device)
        if meta and config.meta.meta_batch < world:
            raise MetaticketError(f"meta.meta_batch = {config.meta.meta_batch} cannot be split over {world} "
                                  f"processes; use at least one task per process")
        if not meta and config.train.batch_size % world:
            raise MetaticketError(f"train.batch_size = {config.train.batch_size} does not split evenly over "
                                  f"{world} processes; use a multiple of {world}")
    return config, state, device, ctx.quiet or not ctx.group.main


def meta_train_in(config: Config, run_dir: Path, ctx: Context, resume: bool,
                  callbacks: Callbacks | Sequence[Callbacks] | None = None) -> dict:
    """Meta-train ``config`` into the given ``run_dir`` (claimed already, or continued with ``resume``).

    In a distributed run every process calls this; only rank 0 validates and writes.
    """
    group = ctx.group
    config, state, device, quiet = _prepare(config, run_dir, ctx, resume)
    spec = get_dataset(config.data.dataset)
    if "train" not in spec.episode_splits:
        trainable = [n for n in list_datasets(episodes=True) if "train" in get_dataset(n).episode_splits]
        what = "offers only test tasks (cross-domain evaluation)" if spec.episodes else "has no few-shot tasks"
        raise MetaticketError(f"data.dataset = {config.data.dataset} {what}; meta-train on {', '.join(trainable)}")
    check_model_name(config)  # before the data is decoded: a misspelt model fails at once
    check_memory(config)
    m = config.meta
    if m.warmup_steps >= m.steps and m.warmup_steps > 0 and group.main:
        print(f"note: meta.warmup_steps = {m.warmup_steps} >= meta.steps = {m.steps}: the outer lr stays in warm-up "
              f"and peaks at {m.outer_lr * m.steps / m.warmup_steps:.3g} of meta.outer_lr = {m.outer_lr:g}; lower "
              f"meta.warmup_steps (e.g. to {max(1, m.steps // 10)})", file=sys.stderr)
    episodes = samplers(config, replace(ctx, quiet=quiet))
    learner = build_learner(config, device, collective=group)  # config.yaml records what runs, not "auto"
    check_forward(learner.model, config, spec.channels, device)
    if state is not None:  # a checkpoint of another architecture is refused before anything is written
        load_weights(learner.model, state["learner"]["model"], run_dir)
    if group.main:
        create_run_dir(config, run_dir, resume, device)
    monitor = Monitor(run_dir, quiet=quiet, write=group.main)
    if not resume:
        key = learner.objective.log_key
        monitor.hparams(hparams_of(config), [f"val/best_{key}", f"val/{key}", f"test/{key}", "test/ci95"])
    plan = MetaPlan.of(config)
    return _finish(lambda: meta_train_loop(learner, episodes["train"], episodes["val"], plan, run_dir, monitor, device,
                                           resume=resume, main=group.main, callbacks=callbacks),
                   run_dir, monitor, group.main and not quiet,
                   lambda r: f"trained {r['steps']} steps ({r['ms_per_step']:.0f} ms/step); best val "
                             + (f"accuracy {r['best_val_accuracy']:.2f}%" if "best_val_accuracy" in r else
                                ", ".join(f"{k.removeprefix('best_val_')} {v:.4f}" for k, v in r.items()
                                          if k.startswith("best_val_")))
                             + f" at step {r['best_step']}")


def _classification(config: Config, ctx: Context) -> Classification:
    return classification_data(config.data.dataset, data_root(config, ctx), ctx.cache_dir, image_size(config),
                               augment=config.train.augment, seed=config.run.seed, progress=not ctx.quiet)


def train(config: Config, ctx: Context, resume_dir: Path | None = None) -> dict:
    """Train ``config`` (run.kind: train) into a new folder ``run.out_dir/run.name`` (``-1``, ... when taken), or
    continue ``resume_dir``'s last checkpoint. Returns the training summary with ``run_dir``."""
    expect_kind(config, "train", "train")
    resume = resume_dir is not None
    run_dir = resume_dir or Path(config.run.out_dir) / config.run.name
    return _claimed(lambda d: train_in(config, d, ctx, resume), run_dir, resume, ctx.group)


def train_in(config: Config, run_dir: Path, ctx: Context, resume: bool) -> dict:
    """Train ``config`` into the given ``run_dir`` (claimed already, or continued with ``resume``).

    In a distributed run every process calls this; each trains on its slice of every batch, rank 0 writes.
    """
    group = ctx.group
    config, state, device, quiet = _prepare(config, run_dir, ctx, resume)
    check_model_name(config)  # before loading data, like a wrong init_from folder: both fail at once
    check_memory(config)
    if config.train.init_from and not resume:
        slot_run_config(config, config.train.init_from)
    data = _classification(config, replace(ctx, quiet=quiet))
    if config.train.init_from and not resume:  # fine-tuning a slot run's chosen values
        model = from_slot_run(config, len(data.classes), config.train.init_from, device)
    else:
        model = build_classifier(config, len(data.classes), device)
    check_forward(model, config, get_dataset(config.data.dataset).channels, device)
    if state is not None:  # a checkpoint of another architecture is refused before anything is written
        load_weights(model, state["model"], run_dir)
    if group.main:
        create_run_dir(config, run_dir, resume, device)
    t = config.train
    plan = TrainPlan.of(config)
    monitor = Monitor(run_dir, quiet=quiet, write=group.main)
    if not resume:
        monitor.hparams(hparams_of(config), ["test/top1", "test/top5", "test/loss", "test/sparsity"])
    if method_of(t).random_mask:
        report = sparsity_report(model)
        layers = ", ".join(f"{k} {v:.3f}" for k, v in report["layers"].items())
        monitor.print(f"random mask ({config.model.ratios}, overall sparsity {report['overall']:.4f}): {layers}")
        if not resume:  # logged once per run, not again on resume
            monitor.log(0, "randommask", {"sparsity": report["overall"],
                                          **{f"sparsity/{k}": v for k, v in report["layers"].items()}})
    return _finish(lambda: train_supervised(model, data.train, data.test, data.mean, data.std, plan, run_dir, monitor,
                                            device, resume=resume, collective=group),
                   run_dir, monitor, group.main and not quiet,
                   lambda r: f"trained {r['iterations']} iterations ({r['ms_per_iter']:.0f} ms/iteration); test "
                             f"top-1 {r['top1']:.2f}%")


def evaluate(run_dir: Path, ctx: Context) -> dict:
    """Test scores of a supervised run's last checkpoint: top-1 (+ top-5 beyond 10 classes), sparsity, params."""
    config = saved_config(run_dir, "the folder train")
    expect_kind(config, "train", "eval")
    device = setup(config)
    data = _classification(config, ctx)
    model = build_classifier(config, len(data.classes), device)
    path = run_dir / "checkpoints" / "last.pt"
    state = check_checkpoint(load_checkpoint(path, map_location=device), "train", path)
    load_weights(model, state["model"], run_dir)
    monitor = scoring_monitor(run_dir, ctx.quiet)
    bar = monitor.progress(len(data.test), "evaluate")
    score = evaluate_classifier(model, data.test, data.mean, data.std, config.train.eval_batch, device,
                                config.data.workers, bar.update)
    bar.close()
    monitor.close()
    per_epoch = len(data.train) // config.train.batch_size
    result = {"method": method_label(config.train.method, config.train.rerand_every), "dataset": config.data.dataset,
              "model": config.model.name,
              "width": config.model.width, "image_size": image_size(config), "top1": round(score["top1"], 3),
              "ci95": round(score["ci95"], 3), "images": score["images"],
              "iterations": state["iteration"], "epochs": round(state["iteration"] / per_epoch, 3),
              "sparsity": round(float(sparsity_report(model)["overall"]), 4), **param_counts(model)}
    if len(data.classes) > 10:
        result["top5"] = round(score["top5"], 3)
    return result


def meta_test(run_dir: Path, ctx: Context, n_tasks: int | None = None, checkpoint: str = "best",
              dataset: str | None = None, tasks: int | None = None) -> dict:
    """Score a run's ``checkpoint`` (best or last) on ``n_tasks`` test tasks (default eval.test_tasks) of its
    dataset, or of ``dataset`` (cross-domain). Returns the meta-test line: accuracy and ci95 in percent, the
    protocol. ``tasks=`` is the old name of ``n_tasks``."""
    n_tasks = renamed_count(n_tasks, tasks)
    config = saved_config(run_dir, "the folder meta-train")
    target = dataset or config.data.dataset
    have, need = get_dataset(target).channels, get_dataset(config.data.dataset).channels
    if get_dataset(target).loss != get_dataset(config.data.dataset).loss:
        raise MetaticketError(f"--dataset {target} is scored by {get_dataset(target).loss} but {run_dir} was "
                              f"trained on {config.data.dataset} ({get_dataset(config.data.dataset).loss} tasks); "
                              f"pick a dataset with the same kind of tasks")
    if have != need:
        raise MetaticketError(f"--dataset {target} has {have}-channel images but {run_dir} was "
                              f"trained on {need}-channel "
                              f"{config.data.dataset}; pick a dataset with the same channels")
    check_memory(config, target)
    device = setup(config)
    learner = build_learner(config, device)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    state = check_checkpoint(load_checkpoint(path, map_location=device), "meta", path)
    load_weights(learner, state["learner"], run_dir)
    test = samplers(config, ctx, dataset=target)["test"]
    n = config.eval.test_tasks if n_tasks is None else n_tasks
    if n < 1:
        raise MetaticketError(f"--tasks {n}: score at least 1 test task")
    monitor = scoring_monitor(run_dir, ctx.quiet)
    bar = monitor.progress(n, "meta-test")
    score = evaluate_tasks(learner, test, n, config.eval.batch, device, progress=bar.update)
    bar.close()
    key, metric = learner.objective.log_key, learner.objective.metric  # acc / accuracy (percent), or mse / mse
    monitor.log(learner.step, "test", {key: score.accuracy, "ci95": score.ci95, "loss": score.loss})
    monitor.close()
    result = {"method": method_label(config.meta.method, config.meta.rerand_every), "dataset": target,
              "trained_on": config.data.dataset,
              "model": config.model.name,
              "width": config.model.width, "ways": config.data.ways, "shots": config.data.shots,
              "queries": config.data.queries, "meta_steps": config.meta.steps, "meta_batch": config.meta.meta_batch,
              metric: round(score.accuracy, 3 if key == "acc" else 5),
              "ci95": round(score.ci95, 3 if key == "acc" else 5), "tasks": score.tasks,
              "inner_steps_test": config.meta.inner_steps_test, "checkpoint": checkpoint, "step": learner.step,
              "sparsity": round(float(sparsity_report(learner.model)["overall"]), 4)}
    return result


# what tells the runs of a sweep apart, first: TensorBoard's HParams table shows the first few columns by default
HPARAMS_FIRST = ("meta.method", "train.method", "model.name", "model.width", "run.seed", "data.dataset", "data.ways",
                 "data.shots", "data.split", "meta.score_grad", "meta.inner_lr", "meta.outer_lr", "train.lr",
                 "meta.steps", "train.epochs", "model.sparsity")
HPARAMS_LEFT_OUT = ("data.root", "data.download", "data.workers")  # where and how data is read, not the science


def hparams_of(config: Config) -> dict[str, object]:
    """A run's hyper-parameters for TensorBoard's HParams view: every number, string and bool (as text) of the
    config's data, model and meta (meta-training) or train (supervised) sections as ``section.key``, and the seed;
    the ones in :data:`HPARAMS_FIRST` first."""
    sections = ("data", "model", "meta" if config.run.kind == "meta" else "train")
    found: dict[str, object] = {"run.seed": config.run.seed}
    for name in sections:
        for k, v in dataclasses.asdict(getattr(config, name)).items():
            if f"{name}.{k}" in HPARAMS_LEFT_OUT:
                continue
            if isinstance(v, bool):  # TensorBoard shows a bool hparam as 1.0000 / 0.0000
                found[f"{name}.{k}"] = str(v).lower()
            elif isinstance(v, (int, float, str)):
                found[f"{name}.{k}"] = v
    first = {k: found[k] for k in HPARAMS_FIRST if k in found}
    return first | {k: v for k, v in found.items() if k not in first}


def scoring_monitor(run_dir: Path, quiet: bool) -> Monitor:
    """The monitor a meta-test or eval of a finished run logs its score with: into the run's metrics.jsonl, or, when
    the folder cannot be written (an archive, a read-only results disk), nowhere, with a note: testing a finished
    run never needs to write into it."""
    try:
        return Monitor(run_dir, quiet=quiet)  # TensorBoard too: the score beside the run's curves and hparams
    except OSError as e:
        if e.errno not in READ_ONLY_ERRNOS:
            raise
        print(f"note: {run_dir} is read-only; the score is printed, not logged into its metrics.jsonl",
              file=sys.stderr)
        return Monitor(run_dir, quiet=quiet, tensorboard=False, write=False)


def _head_classes(weights: dict, run_dir: Path) -> int:
    """The class count of a supervised checkpoint, from its head (plain or supermask ``weight``, slot ``scores``)."""
    for key, dim in (("head.weight", 0), ("head.scores", 1)):
        if key in weights:
            return int(weights[key].shape[dim])
    raise MetaticketError(f"{run_dir}: its checkpoint has no head.weight / head.scores; it is not a metaticket "
                          f"classifier checkpoint")


def _check_ticket_target(out: Path) -> None:
    """``export -o`` writes a new file or replaces a ticket; a folder or any other file is refused."""
    from metaticket.runs.ticket import ticket_info

    if out.is_dir():
        raise MetaticketError(f"-o {out} is a folder; name the ticket file to write, e.g. {out / 'model.ticket'}")
    if out.exists():
        try:
            ticket_info(out)
        except MetaticketError:
            raise MetaticketError(f"-o {out} exists and is not a ticket; choose another path (export replaces only "
                                  f"an earlier ticket)") from None
    if not out.parent.is_dir():
        raise MetaticketError(f"-o {out}: the folder {out.parent} does not exist; create it or choose another path")


def export(run_dir: Path, output: Path | None = None, checkpoint: str | None = None) -> dict:
    """Write a run's network as a compact ticket (default ``<run_dir>/<run.name>.ticket``) from its ``checkpoint``
    (default best for meta-learning, last for supervised runs) and check that the rebuilt network computes the same
    outputs. Returns the ticket report with ``max_abs_output_diff``."""
    from metaticket.runs.ticket import export_ticket, load_ticket, same_outputs

    config = saved_config(run_dir, "a folder meta-train or train")
    out = output or run_dir / f"{config.run.name}.ticket"
    _check_ticket_target(out)
    meta = config.run.kind == "meta"
    which = checkpoint or ("best" if meta else "last")
    path = run_dir / "checkpoints" / f"{which}.pt"
    state = check_checkpoint(load_checkpoint(path), config.run.kind, path)
    weights = state["learner"]["model"] if meta else state["model"]
    num_classes = None if meta else _head_classes(weights, run_dir)
    model = build_network(config, num_classes)
    load_weights(model, weights, run_dir)
    step = state["learner"]["step"] if meta else state["iteration"]
    report = export_ticket(model, config, out, num_classes=num_classes,
                           info={"run": str(run_dir), "checkpoint": which, "step": int(step)})
    channels = get_dataset(config.data.dataset).channels
    size = image_size(config)
    example = torch.randn(16, channels, size, size, generator=torch.Generator().manual_seed(0))
    diff = same_outputs(model, load_ticket(out), example)
    return {**report, "checkpoint": which, "step": int(step), "max_abs_output_diff": diff,
            "identical_outputs": diff == 0.0}


def sweep(config: str, ctx: Context, overrides: Sequence[str] = (), methods: Sequence[str] | None = None,
          widths: Sequence[float] | None = None, sparsities: Sequence[float] | None = None,
          seeds: Sequence[int] | None = None) -> dict:
    """Train and test one run per point of methods x widths x sparsities x seeds; write a table (and a plot).

    ``config`` is a YAML path; a ``{method}`` in it picks one file per method. Runs go to
    ``<out_dir>/<name>-sweep/<point>/``; calling again skips finished points and resumes interrupted ones. With only
    ``seeds`` the table lists the seeds and their mean +- CI. Returns the table (``markdown`` holds it as text).
    """
    grid_values = {"seeds": list(seeds or []), "methods": list(methods or []), "widths": list(widths or []),
                   "sparsities": list(sparsities or [])}
    for flag, values in grid_values.items():
        if len(set(values)) < len(values):
            twice = sorted({v for v in values if values.count(v) > 1}, key=str)
            raise MetaticketError(f"--{flag} lists {', '.join(map(str, twice))} more than once; give each value once")
    for seed in seeds or []:
        if not 0 <= seed < 2**32:
            raise MetaticketError(f"--seeds {seed} is out of range: seeds lie in [0, 2^32)")
    per_method = "{method}" in config  # one config file per method, e.g. configs/cifar10/conv6_{method}.yaml
    if per_method and not methods:
        raise MetaticketError(f"{config} names a {{method}} placeholder; list the methods with --methods")

    def config_path(method: str | None) -> str:
        return config.replace("{method}", method) if per_method and method else config

    base = load_config(config_path(methods[0] if methods else None), list(overrides))
    sweep_dir = Path(base.run.out_dir) / f"{base.run.name}-sweep"
    method_key = "meta.method" if base.run.kind == "meta" else "train.method"
    grid = bool(methods or widths or sparsities)
    points = list(itertools.product(methods or [None], widths or [None], sparsities or [None],
                                    seeds or [base.run.seed]))
    planned = []  # every point's config first: a bad value stops the sweep before any run starts
    for method, width, sparsity, seed in points:
        # a {method} file names its method itself (conv6_iterand.yaml, slot_k8_greedy.yaml); else --methods sets it
        swept = ((method_key, None if per_method else method), ("model.width", width))
        point_overrides = [*overrides, *(f"{key}={value}" for key, value in swept if value is not None)]
        parts = [p for p, v in ((f"{method}", method), (f"w{width}", width)) if v is not None]
        point = load_config(config_path(method), [*point_overrides, f"run.seed={seed}"])
        key = sparsity_key(point)
        if sparsity is not None:
            if key is None:
                chosen = point.meta.method if point.run.kind == "meta" else point.train.method
                raise MetaticketError(f"--sparsities changes nothing in {config_path(method)} ({method_key} = "
                                      f"{chosen}, model.mask = {point.model.mask}): it sets model.sparsity of top-k "
                                      f"masks (model.mask: topk) and model.random_sparsity of train.method "
                                      f"randommask; sweep those, or drop --sparsities")
            point = load_config(config_path(method), [*point_overrides, f"{key}={sparsity}", f"run.seed={seed}"])
            parts.append(f"s{sparsity}")
        target = getattr(point.model, (key or "model.sparsity").removeprefix("model."))
        row = {"seed": seed, "target_sparsity": target}
        planned.append((point, sweep_dir / "-".join([*parts, f"seed{seed}"]), row))
    bar = Monitor.bar(len(points), f"sweep ({len(points)} runs)", quiet=ctx.quiet)
    rows = []
    for point, run_dir, row in planned:
        bar.set_postfix_str(run_dir.name)
        rows.append({**row, **_sweep_point(point, run_dir, ctx)})
        bar.update(1)
    bar.close()
    table = grid_table(rows) if grid else seed_table(rows)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(sweep_dir / "sweep.json", json.dumps(table, indent=2))
    write_text_atomic(sweep_dir / "sweep.md", table["markdown"])
    if grid:
        try:
            plot_grid(table, sweep_dir / "sweep.png")
        except ImportError:
            print("matplotlib is not installed: no sweep.png (pip install 'metaticket[plot]')", file=sys.stderr)
    return table


def sparsity_key(config: Config) -> str | None:
    """The key that sets the pruned fraction of ``config``'s masks: ``model.sparsity`` for a top-k supermask
    (Meta-ticket methods or edge-popup with ``model.mask: topk``), ``model.random_sparsity`` for train.method
    randommask, None when nothing sets it (the threshold rule, where sparsity emerges from the scores, or no mask)."""
    from metaticket.meta.learner import METHODS

    if config.run.kind == "meta":
        return "model.sparsity" if METHODS[config.meta.method].needs_supermask and config.model.mask == "topk" else None
    kind = method_of(config.train)
    if kind.random_mask:
        return "model.random_sparsity"
    return "model.sparsity" if kind.supermask and config.model.mask == "topk" else None


def _sweep_point(config: Config, run_dir: Path, ctx: Context) -> dict:
    """Test result of one sweep run, training (or resuming) it first when it is not finished."""
    done = read_json(run_dir / "test.json")  # None also when a crash tore it: scored again
    if done is not None:
        return done
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    summary = read_json(run_dir / "train_summary.json")
    if config.run.kind == "meta":
        if summary is None or summary.get("steps", 0) < config.meta.steps:
            meta_train_in(config, run_dir, ctx, resume)
        result = meta_test(run_dir, ctx, checkpoint="best")
    else:
        if summary is None or "ms_per_iter" not in summary:
            train_in(config, run_dir, ctx, resume)
            summary = read_json(run_dir / "train_summary.json") or {}
        result = {**evaluate(run_dir, ctx), "ms_per_iter": round(summary["ms_per_iter"], 1),
                  "train_minutes": round(summary["train_minutes"], 2)}
    write_text_atomic(run_dir / "test.json", json.dumps(result))
    return result
