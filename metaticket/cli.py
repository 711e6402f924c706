"""Command line: the only place that reads argv, the environment and the whole config.

    python run.py meta-train CONFIG [--set section.key=value ...] [--resume] [--test] [--quiet]
    python run.py meta-test RUN_DIR [--tasks 600] [--checkpoint best|last] [--dataset NAME]
    python run.py train CONFIG [--set section.key=value ...] [--resume RUN_DIR] [--quiet]
    python run.py eval RUN_DIR [--quiet]
    python run.py plot RUN_DIR [RUN_DIR ...] [-o curves.png]
    python run.py export RUN_DIR [-o model.ticket] [--checkpoint best|last]
    python run.py sweep CONFIG [--seeds 1 2 3] [--methods ...] [--widths ...] [--sparsities ...] [--set ...]
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from metaticket.baselines.train import Plan, evaluate_classifier, param_counts, train_supervised
from metaticket.checkpoint import check_checkpoint, load_checkpoint, read_json, write_text_atomic
from metaticket.config import Config, ConfigError, config_yaml, load_config
from metaticket.data import episode_samplers, get_dataset, list_datasets
from metaticket.data.classification import classification_data
from metaticket.distributed import SINGLE, Collective, from_environment, shutdown
from metaticket.errors import MetaticketError
from metaticket.factory import (
    build_classifier,
    build_learner,
    check_model_name,
    from_slot_run,
    image_size,
    slot_run_config,
)
from metaticket.meta.evaluate import evaluate
from metaticket.meta.train import Schedule, meta_train
from metaticket.monitor import Monitor
from metaticket.supermask import sparsity_report
from metaticket.sweep import grid_table, plot_grid, seed_table


def cache_dir() -> Path:
    """Decoded-dataset cache and download folder: ``$METATICKET_CACHE`` or ``~/.cache/metaticket``."""
    return Path(os.environ.get("METATICKET_CACHE") or Path.home() / ".cache" / "metaticket")


def data_root(config: Config) -> Path:
    """``data.root``, else ``$METATICKET_DATA``, else the download folder inside the cache."""
    if config.data.root:
        return Path(config.data.root).expanduser()
    env = os.environ.get("METATICKET_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data"


def claim_run_dir(run_dir: Path) -> Path:
    """The first of ``run_dir``, ``run_dir-1``, ``run_dir-2``, ... that holds no run, claimed at once.

    The claim is an exclusive create of the folder's (still empty) ``config.yaml``, so two runs started at the same
    moment with the same name get two folders. :func:`release_run_dir` undoes a claim whose run never started.
    """
    n = 0
    while True:
        candidate = run_dir if n == 0 else run_dir.with_name(f"{run_dir.name}-{n}")
        if not (candidate / "checkpoints").exists():
            try:
                candidate.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MetaticketError(f"cannot create the run folder {candidate} ({e.strerror}); point run.out_dir at "
                                      f"a folder you can write to") from None
            try:
                os.close(os.open(candidate / "config.yaml", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return candidate
            except FileExistsError:
                pass
        n += 1


def release_run_dir(run_dir: Path, keep: Path) -> None:
    """Undo the claim of a run refused before it started (its ``config.yaml`` still empty): remove the file and the
    folders made for it, up to ``keep`` (the deepest folder that existed before), while they are empty."""
    claim = run_dir / "config.yaml"
    if not claim.is_file() or claim.stat().st_size:
        return
    claim.unlink()
    folder = run_dir
    while folder != keep and folder != folder.parent:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else lives there
            return
        folder = folder.parent


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_in_claimed_dir(start: Callable[[Path], object], run_dir: Path, resume: bool, group: Collective) -> Path:
    """Claim the run folder (rank 0, unless resuming), call ``start(folder)``, and release the claim when the run is
    refused before it writes its config. Returns the folder."""
    keep = _existing_ancestor(run_dir.parent)
    if not resume and group.main:
        run_dir = claim_run_dir(run_dir)
    run_dir = Path(group.broadcast(str(run_dir)))  # rank 0 chose the folder
    try:
        start(run_dir)
    except BaseException:
        if not resume and group.main:
            release_run_dir(run_dir, keep)
        raise
    return run_dir


def create_run_dir(config: Config, run_dir: Path, resume: bool) -> None:
    """Write ``run_dir``'s config.yaml (rank 0) once data and model are built and a resumed checkpoint fits: a run
    refused before this point leaves no folder, and the note on a diverted folder is printed only for a run that
    starts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", config_yaml(config))
    wanted = Path(config.run.out_dir) / config.run.name
    if not resume and run_dir.parent == wanted.parent and run_dir.name != wanted.name:
        print(f"{wanted} holds an earlier run; writing this one to {run_dir}", file=sys.stderr)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetaticketError(f"run.device = {name} but CUDA is not available here; use run.device=auto or cpu")
    return torch.device(name)


def samplers(config: Config, quiet: bool, dataset: str | None = None) -> dict:
    """Episode samplers of the config's dataset (or of ``dataset``, at the config's image size)."""
    d = config.data
    return episode_samplers(dataset or d.dataset, data_root(config), cache_dir(), ways=d.ways, shots=d.shots,
                            queries=d.queries, image_size=image_size(config), rotations=d.rotations,
                            seed=config.run.seed, val_seed=config.eval.task_seed, download=d.download,
                            workers=d.workers, progress=not quiet)


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
    meta = config.run.task == "meta"
    spec = get_dataset(name)
    pixels = (spec.channels if meta else 3) * side * side
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


def _setup(config: Config) -> torch.device:
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


GROWABLE = ("meta.steps", "train.epochs", "train.max_iterations")  # what a --resume may raise: train longer


def _check_resumable(run_dir: Path, config: Config) -> dict:
    """The checkpoint a ``--resume`` of ``run_dir`` continues, once the config is known to equal the saved one (but
    for a larger :data:`GROWABLE` value) and the checkpoint to be readable and of this kind of run. Writes nothing."""
    saved = run_dir / "config.yaml"
    if not saved.is_file() or not saved.stat().st_size:
        raise MetaticketError(f"cannot resume {run_dir}: it has no config.yaml; start a new run instead")
    old, new = load_config(saved).to_dict(), config.to_dict()
    diff = [(f"{sec}.{k}", old[sec][k], new[sec][k]) for sec in new for k in new[sec] if new[sec][k] != old[sec][k]]
    fixed = [f"{k} (saved {a!r}, now {b!r})" for k, a, b in diff if k not in GROWABLE]
    if fixed:
        raise MetaticketError(f"cannot resume {run_dir}: the config differs from its saved config.yaml in "
                              f"{', '.join(fixed[:4])}{' and more' if len(fixed) > 4 else ''}; resume with the saved "
                              f"values (only {', '.join(GROWABLE)} may grow)")
    for key, a, b in diff:
        if b is not None and (a is None or b < a):  # null max_iterations: no limit
            raise MetaticketError(f"cannot resume {run_dir}: {key} = {b} is below the saved {a}; a resumed run may "
                                  f"train longer, not shorter")
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():  # checked before anything is written into the folder
        raise MetaticketError(f"cannot resume {run_dir}: it has no checkpoints/last.pt; start a new run instead")
    return check_checkpoint(load_checkpoint(last), config.run.task, last)


def _group(config: Config) -> tuple[Collective, torch.device]:
    """The torchrun process group (or a single process) and this process's device (``cuda:LOCAL_RANK`` on GPUs)."""
    device = resolve_device(config.run.device)
    group = from_environment(dict(os.environ), device)
    if group.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return group, device


def train_run(config: Config, run_dir: Path, resume: bool, quiet: bool, group: Collective = SINGLE) -> dict:
    """Meta-train ``config`` into ``run_dir`` (continuing its last checkpoint with ``resume``).

    In a distributed run every process calls this; only rank 0 validates and writes.
    """
    _expect_task(config, "meta", "meta-train")
    state = _check_resumable(run_dir, config) if resume else None
    device = _setup(config)
    if group.world > 1:
        device = _group(config)[1]
        if config.meta.meta_batch < group.world:
            raise MetaticketError(f"meta.meta_batch = {config.meta.meta_batch} cannot be split over {group.world} "
                                  f"processes; use at least one task per process")
    spec = get_dataset(config.data.dataset)
    if "train" not in spec.episode_splits:
        trainable = [n for n in list_datasets(episodes=True) if "train" in get_dataset(n).episode_splits]
        what = "offers only test tasks (cross-domain evaluation)" if spec.episodes else "has no few-shot tasks"
        raise MetaticketError(f"data.dataset = {config.data.dataset} {what}; meta-train on {', '.join(trainable)}")
    quiet = quiet or not group.main
    check_model_name(config)  # before the data is decoded: a misspelt model fails at once
    check_memory(config)
    sets = samplers(config, quiet)
    learner = build_learner(config, device, collective=group)
    check_forward(learner.model, config, spec.channels, device)
    if state is not None:  # a checkpoint of another architecture is refused before anything is written
        _load_weights(learner.model, state["learner"]["model"], run_dir)
    if group.main:
        create_run_dir(config, run_dir, resume)
    monitor = Monitor(run_dir, quiet=quiet, write=group.main)
    e = config.eval
    plan = Schedule(steps=config.meta.steps, meta_batch=config.meta.meta_batch, val_every=e.val_every,
                    val_tasks=e.val_tasks, val_seed=e.task_seed, eval_batch=e.batch,
                    checkpoint_every=config.run.checkpoint_every, log_every=config.run.log_every)
    try:
        summary = meta_train(learner, sets["train"], sets["val"], plan, run_dir, monitor, device, resume=resume,
                             main=group.main)
    finally:
        monitor.close()
    if not group.main:
        return summary
    write_text_atomic(run_dir / "train_summary.json", json.dumps(summary, indent=2))
    if not quiet:
        print(f"trained {summary['steps']} steps ({summary['ms_per_step']:.0f} ms/step); best val accuracy "
              f"{summary['best_val_accuracy']:.2f}% at step {summary['best_step']}; run folder {run_dir}",
              file=sys.stderr)
    return summary


def cmd_meta_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    _expect_task(config, "meta", "meta-train")
    group, _ = _group(config)
    run_dir = run_in_claimed_dir(lambda d: train_run(config, d, args.resume, args.quiet, group),
                                 Path(config.run.out_dir) / config.run.name, args.resume, group)
    group.barrier()
    if args.test and group.main:
        print(json.dumps(meta_test(run_dir, tasks=None, checkpoint="best", quiet=args.quiet)))
    return 0


def _expect_task(config: Config, task: str, command: str) -> None:
    if config.run.task != task:
        other = "meta-train" if config.run.task == "meta" else "train"
        raise MetaticketError(f"this config has run.task = {config.run.task}; run it with `run.py {other}`, "
                              f"or set run.task = {task} for {command}")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train and test one run per point of methods x widths x sparsities x seeds; write a table (and a plot).

    Runs go to ``<out_dir>/<name>-sweep/<point>/``; re-running the same command skips finished points and
    resumes interrupted ones. With only ``--seeds`` the table lists the seeds and their mean +- CI.
    """
    for flag in ("seeds", "methods", "widths", "sparsities"):
        values = getattr(args, flag) or []
        if len(set(values)) < len(values):
            twice = sorted({v for v in values if values.count(v) > 1}, key=str)
            raise MetaticketError(f"--{flag} lists {', '.join(map(str, twice))} more than once; give each value once")
    for seed in args.seeds or []:
        if not 0 <= seed < 2**32:
            raise MetaticketError(f"--seeds {seed} is out of range: seeds lie in [0, 2^32)")
    per_method = "{method}" in args.config  # one config file per method, e.g. configs/cifar10/conv6_{method}.yaml
    if per_method and not args.methods:
        raise MetaticketError(f"{args.config} names a {{method}} placeholder; list the methods with --methods")

    def config_path(method: str | None) -> str:
        return args.config.replace("{method}", method) if per_method and method else args.config

    base = load_config(config_path(args.methods[0] if args.methods else None), args.set)
    sweep_dir = Path(base.run.out_dir) / f"{base.run.name}-sweep"
    method_key = "meta.method" if base.run.task == "meta" else "train.method"
    grid = bool(args.methods or args.widths or args.sparsities)
    points = list(itertools.product(args.methods or [None], args.widths or [None], args.sparsities or [None],
                                    args.seeds or [base.run.seed]))
    bar = Monitor.bar(len(points), f"sweep ({len(points)} runs)", quiet=args.quiet)
    rows = []
    for method, width, sparsity, seed in points:
        sets, parts = list(args.set), []
        swept = ((method_key, method, ""), ("model.width", width, "w"), ("model.sparsity", sparsity, "s"))
        for key, value, tag in swept:
            if value is not None:
                sets.append(f"{key}={value}")
                parts.append(f"{tag}{value}")
        config = load_config(config_path(method), [*sets, f"run.seed={seed}"])
        run_dir = sweep_dir / "-".join([*parts, f"seed{seed}"])
        bar.set_postfix_str(run_dir.name)
        result = _sweep_point(config, run_dir, args.quiet)
        rows.append({"seed": seed, "target_sparsity": config.model.sparsity, **result})
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
            print("matplotlib is not installed: no sweep.png (pip install matplotlib)", file=sys.stderr)
    print(table["markdown"], file=sys.stderr)
    print(json.dumps({k: v for k, v in table.items() if k != "markdown"}))
    return 0


def _sweep_point(config: Config, run_dir: Path, quiet: bool) -> dict:
    """Test result of one sweep run, training (or resuming) it first when it is not finished."""
    done = read_json(run_dir / "test.json")  # None also when a crash tore it: scored again
    if done is not None:
        return done
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    summary = read_json(run_dir / "train_summary.json")
    if config.run.task == "meta":
        if summary is None or summary.get("steps", 0) < config.meta.steps:
            train_run(config, run_dir, resume, quiet)
        result = meta_test(run_dir, tasks=None, checkpoint="best", quiet=quiet)
    else:
        if summary is None or "ms_per_iter" not in summary:
            supervised_run(config, run_dir, resume, quiet)
            summary = read_json(run_dir / "train_summary.json") or {}
        result = {**eval_run(run_dir, quiet), "ms_per_iter": round(summary["ms_per_iter"], 1),
                  "train_minutes": round(summary["train_minutes"], 2)}
    write_text_atomic(run_dir / "test.json", json.dumps(result))
    return result


# ----------------------------------------------------------------------------------------------- supervised
def _classification(config: Config, quiet: bool):
    return classification_data(config.data.dataset, data_root(config), cache_dir(), image_size(config),
                               augment=config.train.augment, seed=config.run.seed, progress=not quiet)


def supervised_run(config: Config, run_dir: Path, resume: bool, quiet: bool, group: Collective = SINGLE) -> dict:
    """Train ``config`` (run.task: train) into ``run_dir``, continuing its last checkpoint with ``resume``.

    In a distributed run every process calls this; each trains on its slice of every batch, rank 0 writes.
    """
    _expect_task(config, "train", "train")
    state = _check_resumable(run_dir, config) if resume else None
    device = _setup(config)
    if group.world > 1:
        device = _group(config)[1]
        if config.train.batch_size % group.world:
            raise MetaticketError(f"train.batch_size = {config.train.batch_size} does not split evenly over "
                                  f"{group.world} processes; use a multiple of {group.world}")
    quiet = quiet or not group.main
    check_model_name(config)  # before loading data, like a wrong init_from folder: both fail at once
    check_memory(config)
    if config.train.init_from and not resume:
        slot_run_config(config, config.train.init_from)
    data = _classification(config, quiet)
    if config.train.init_from and not resume:  # fine-tuning a slot run's chosen values
        model = from_slot_run(config, len(data.classes), config.train.init_from, device)
    else:
        model = build_classifier(config, len(data.classes), device)
    check_forward(model, config, 3, device)
    if state is not None:  # a checkpoint of another architecture is refused before anything is written
        _load_weights(model, state["model"], run_dir)
    if group.main:
        create_run_dir(config, run_dir, resume)
    t = config.train
    plan = Plan(method=t.method, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                weight_decay=t.weight_decay, schedule=t.schedule, warmup_epochs=t.warmup_epochs,
                label_smoothing=t.label_smoothing, max_iterations=t.max_iterations, rerand_every=t.rerand_every,
                rerand_unit=t.rerand_unit, rerand_rate=t.rerand_rate, eval_every=t.eval_every,
                eval_batch=t.eval_batch, checkpoint_every=config.run.checkpoint_every,
                log_every=config.run.log_every, workers=config.data.workers, seed=config.run.seed,
                channels_last=t.channels_last, randommask_learns=t.randommask_learns)
    monitor = Monitor(run_dir, quiet=quiet, write=group.main)
    if t.method == "randommask":
        report = sparsity_report(model)
        layers = ", ".join(f"{k} {v:.3f}" for k, v in report["layers"].items())
        monitor.print(f"random mask ({config.model.ratios}, overall sparsity {report['overall']:.4f}): {layers}")
        if not resume:  # logged once per run, not again on resume
            monitor.log(0, "randommask", {"sparsity": report["overall"],
                                          **{f"sparsity/{k}": v for k, v in report["layers"].items()}})
    try:
        summary = train_supervised(model, data.train, data.test, data.mean, data.std, plan, run_dir, monitor, device,
                                   resume=resume, collective=group)
    finally:
        monitor.close()
    if not group.main:
        return summary
    write_text_atomic(run_dir / "train_summary.json", json.dumps(summary, indent=2))
    if not quiet:
        print(f"trained {summary['iterations']} iterations ({summary['ms_per_iter']:.0f} ms/iteration); test top-1 "
              f"{summary['top1']:.2f}%; run folder {run_dir}", file=sys.stderr)
    return summary


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise MetaticketError(f"--resume {run_dir}: not a run folder (no config.yaml); pass the folder train wrote")
        config = load_config(run_dir / "config.yaml", args.set) if args.config is None else \
            load_config(args.config, args.set)
    else:
        if args.config is None:
            raise MetaticketError("train needs a CONFIG file (or --resume RUN_DIR)")
        config = load_config(args.config, args.set)
        _expect_task(config, "train", "train")
        run_dir = Path(config.run.out_dir) / config.run.name
    group, _ = _group(config)
    run_dir = run_in_claimed_dir(lambda d: supervised_run(config, d, bool(args.resume), args.quiet, group), run_dir,
                                 bool(args.resume), group)
    group.barrier()
    if group.main:
        print(json.dumps(eval_run(run_dir, args.quiet)))
    return 0


def _saved_config(run_dir: Path, writers: str) -> Config:
    """The config.yaml a run folder holds; ``writers`` names the commands that write such folders."""
    if not (run_dir / "config.yaml").is_file():
        raise MetaticketError(f"{run_dir} is not a run folder (no config.yaml); pass {writers} wrote")
    return load_config(run_dir / "config.yaml")


def _load_weights(target, state: dict, run_dir: Path) -> None:
    """``target.load_state_dict(state)`` with a one-line error when the checkpoint is of another architecture."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise MetaticketError(f"{run_dir}: the checkpoint does not fit the model of its config.yaml "
                              f"({str(e).splitlines()[0][:120]}); restore the model settings it was trained with, or "
                              f"train a new run") from None


def eval_run(run_dir: Path, quiet: bool) -> dict:
    """Test scores of a supervised run's last checkpoint: top-1 (+ top-5 beyond 10 classes), sparsity, params."""

    config = _saved_config(run_dir, "the folder train")
    _expect_task(config, "train", "eval")
    device = _setup(config)
    data = _classification(config, quiet)
    model = build_classifier(config, len(data.classes), device)
    path = run_dir / "checkpoints" / "last.pt"
    state = check_checkpoint(load_checkpoint(path, map_location=device), "train", path)
    _load_weights(model, state["model"], run_dir)
    monitor = Monitor(run_dir, quiet=quiet, tensorboard=False)
    bar = monitor.progress(len(data.test), "evaluate")
    score = evaluate_classifier(model, data.test, data.mean, data.std, config.train.eval_batch, device,
                                config.data.workers, bar.update)
    bar.close()
    monitor.close()
    per_epoch = len(data.train) // config.train.batch_size
    result = {"method": config.train.method, "dataset": config.data.dataset, "model": config.model.name,
              "width": config.model.width, "image_size": image_size(config), "top1": round(score["top1"], 3),
              "ci95": round(score["ci95"], 3), "images": score["images"],
              "iterations": state["iteration"], "epochs": round(state["iteration"] / per_epoch, 3),
              "sparsity": round(float(sparsity_report(model)["overall"]), 4), **param_counts(model)}
    if len(data.classes) > 10:
        result["top5"] = round(score["top5"], 3)
    return result


def cmd_plot(args: argparse.Namespace) -> int:
    from metaticket.plots import plot_runs

    dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.output) if args.output else dirs[0] / "curves.png"
    try:
        plot_runs(dirs, out)
    except ImportError:
        raise MetaticketError("plot needs matplotlib: pip install matplotlib") from None
    print(out)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    print(json.dumps(eval_run(Path(args.run_dir), args.quiet)))
    return 0


def cmd_meta_test(args: argparse.Namespace) -> int:
    result = meta_test(Path(args.run_dir), tasks=args.tasks, checkpoint=args.checkpoint, quiet=args.quiet,
                       dataset=args.dataset)
    print(json.dumps(result))
    return 0


def meta_test(run_dir: Path, tasks: int | None, checkpoint: str, quiet: bool, dataset: str | None = None) -> dict:
    """Score a run's checkpoint on test tasks of its dataset, or of ``dataset`` (cross-domain)."""
    config = _saved_config(run_dir, "the folder meta-train")
    target = dataset or config.data.dataset
    have, need = get_dataset(target).channels, get_dataset(config.data.dataset).channels
    if have != need:
        raise MetaticketError(f"--dataset {target} has {have}-channel images but {run_dir} was "
                              f"trained on {need}-channel "
                              f"{config.data.dataset}; pick a dataset with the same channels")
    check_memory(config, target)
    device = _setup(config)
    learner = build_learner(config, device)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    state = check_checkpoint(load_checkpoint(path, map_location=device), "meta", path)
    _load_weights(learner, state["learner"], run_dir)
    test = samplers(config, quiet, dataset=target)["test"]
    n = config.eval.test_tasks if tasks is None else tasks
    if n < 1:
        raise MetaticketError(f"--tasks {n}: score at least 1 test task")
    monitor = Monitor(run_dir, quiet=quiet, tensorboard=False)
    bar = monitor.progress(n, "meta-test")
    score = evaluate(learner, test, n, config.eval.batch, device, progress=bar.update)
    bar.close()
    monitor.log(learner.step, "test", {"acc": score.accuracy, "ci95": score.ci95, "loss": score.loss})
    monitor.close()
    result = {"method": config.meta.method, "dataset": target, "trained_on": config.data.dataset,
              "model": config.model.name,
              "width": config.model.width, "ways": config.data.ways, "shots": config.data.shots,
              "queries": config.data.queries, "meta_steps": config.meta.steps, "meta_batch": config.meta.meta_batch,
              "accuracy": round(score.accuracy, 3), "ci95": round(score.ci95, 3), "tasks": score.tasks,
              "inner_steps_test": config.meta.inner_steps_test, "checkpoint": checkpoint, "step": learner.step,
              "sparsity": round(float(sparsity_report(learner.model)["overall"]), 4)}
    return result


def _head_classes(weights: dict, run_dir: Path) -> int:
    """The class count of a supervised checkpoint, from its head (plain or supermask ``weight``, slot ``scores``)."""
    for key, dim in (("head.weight", 0), ("head.scores", 1)):
        if key in weights:
            return int(weights[key].shape[dim])
    raise MetaticketError(f"{run_dir}: its checkpoint has no head.weight / head.scores; it is not a metaticket "
                          f"classifier checkpoint")


def _check_ticket_target(out: Path) -> None:
    """``export -o`` writes a new file or replaces a ticket; a folder or any other file is refused."""
    from metaticket.ticket import ticket_info

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


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's network as a compact ticket and check that the rebuilt network computes the same outputs."""
    from metaticket.factory import build_network
    from metaticket.ticket import export_ticket, load_ticket, same_outputs

    run_dir = Path(args.run_dir)
    config = _saved_config(run_dir, "a folder meta-train or train")
    out = Path(args.output) if args.output else run_dir / f"{config.run.name}.ticket"
    _check_ticket_target(out)
    meta = config.run.task == "meta"
    which = args.checkpoint or ("best" if meta else "last")
    path = run_dir / "checkpoints" / f"{which}.pt"
    state = check_checkpoint(load_checkpoint(path), config.run.task, path)
    weights = state["learner"]["model"] if meta else state["model"]
    num_classes = None if meta else _head_classes(weights, run_dir)
    model = build_network(config, num_classes)
    _load_weights(model, weights, run_dir)
    step = state["learner"]["step"] if meta else state["iteration"]
    report = export_ticket(model, config, out, num_classes=num_classes,
                           info={"run": str(run_dir), "checkpoint": which, "step": int(step)})
    channels = get_dataset(config.data.dataset).channels if meta else 3
    size = image_size(config)
    example = torch.randn(16, channels, size, size, generator=torch.Generator().manual_seed(0))
    diff = same_outputs(model, load_ticket(out), example)
    print(json.dumps({**report, "checkpoint": which, "step": int(step), "max_abs_output_diff": diff,
                      "identical_outputs": diff == 0.0}))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (no usage block), exit code 2 like every other refused input."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number (use at least 1)")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="run.py", description="metaticket: sparse tickets in random networks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("meta-train", help="meta-train a few-shot learner from a YAML config")
    t.add_argument("config", help="YAML config file (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    t.add_argument("--resume", action="store_true", help="continue the run folder's last checkpoint")
    t.add_argument("--test", action="store_true", help="meta-test the best checkpoint afterwards")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_meta_train)
    e = sub.add_parser("meta-test", help="meta-test a run folder on the test split; prints one JSON line")
    e.add_argument("run_dir")
    e.add_argument("--tasks", type=_positive_int, default=None, help="number of test tasks (default: eval.test_tasks)")
    e.add_argument("--checkpoint", choices=("best", "last"), default="best")
    e.add_argument("--dataset", choices=list_datasets(episodes=True), default=None,
                   help="cross-domain: test on this dataset's test classes instead of the run's own")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_meta_test)
    r = sub.add_parser("train", help="supervised training (dense, edge-popup, IteRand); prints one JSON line")
    r.add_argument("config", nargs="?", default=None, help="YAML config with run.task: train (see configs/)")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    r.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue this run folder's last checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_train)
    v = sub.add_parser("eval", help="test a supervised run folder; prints one JSON line")
    v.add_argument("run_dir")
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=cmd_eval)
    g = sub.add_parser("plot", help="PNG curves (accuracy, loss, sparsity) of one or more run folders")
    g.add_argument("run_dirs", nargs="+")
    g.add_argument("-o", "--output", default=None, help="PNG path (default: <first run>/curves.png)")
    g.set_defaults(func=cmd_plot)
    x = sub.add_parser("export", help="write a run's network as a compact ticket (seed + mask bits); prints JSON")
    x.add_argument("run_dir")
    x.add_argument("-o", "--output", default=None, help="ticket path (default: <run_dir>/<run.name>.ticket)")
    x.add_argument("--checkpoint", choices=("best", "last"), default=None,
                   help="default: best for meta-learning runs, last for supervised runs")
    x.set_defaults(func=cmd_export)
    w = sub.add_parser("sweep", help="train and test one run per point of methods x widths x sparsities x seeds")
    w.add_argument("config", help="YAML config; a {method} in the path picks one file per --methods value")
    w.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the config's run.seed")
    w.add_argument("--methods", nargs="+", default=None, help="values of meta.method or train.method")
    w.add_argument("--widths", type=float, nargs="+", default=None, help="values of model.width")
    w.add_argument("--sparsities", type=float, nargs="+", default=None, help="values of model.sparsity")
    w.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(func=cmd_sweep)
    return p


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """A full disk in TensorBoard's writer thread is reported once, by the main thread (see :func:`main`)."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_FULL:
        return
    threading.__excepthook__(args)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    threading.excepthook = _thread_excepthook
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except (ConfigError, MetaticketError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk (or quota) while writing logs, events or results
        if e.errno not in DISK_FULL:
            raise
        print(f"error: cannot write {e.filename or 'a run file'} ({e.strerror}); the last checkpoint written is "
              f"kept: free disk space and continue with --resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    finally:
        shutdown(barrier=finished)  # a no-op unless torchrun started a process group
