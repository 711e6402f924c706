"""Command line: the only place that reads argv and the environment; a thin parser over :mod:`metaticket.runs.commands`.

    python run.py meta-train CONFIG [--set section.key=value ...] [--resume] [--test] [--quiet]
    python run.py meta-test RUN_DIR [--tasks 600] [--checkpoint best|last] [--dataset NAME]
    python run.py train CONFIG [--set section.key=value ...] [--resume RUN_DIR] [--quiet]
    python run.py eval RUN_DIR [--quiet]
    python run.py plot RUN_DIR [RUN_DIR ...] [-o curves.png]
    python run.py export RUN_DIR [-o model.ticket] [--checkpoint best|last]
    python run.py sweep CONFIG [--seeds 1 2 3] [--methods ...] [--widths ...] [--sparsities ...] [--set ...]
    python run.py configs [FILTER]

``metaticket ...`` (the console script) and ``python -m metaticket ...`` run the same commands. CONFIG is a YAML
path or the name of a shipped config (``omniglot/quickstart``).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path

import torch

from metaticket.config import Config, ConfigError, load_config, load_run_config, shipped_configs
from metaticket.data import list_datasets
from metaticket.distributed import from_environment, shutdown
from metaticket.errors import READ_ONLY_ERRNOS, MetaticketError
from metaticket.runs import commands as runs
from metaticket.runs.commands import Context, resolve_device


def context(config: Config | None, quiet: bool) -> Context:
    """The run context from this process's environment: data and cache folders, and (with ``config``) the
    torchrun process group and this process's device (``cuda:LOCAL_RANK`` on GPUs)."""
    ctx = Context.from_environment(os.environ, quiet=quiet)
    if config is None:
        return ctx
    device = resolve_device(config.run.device)
    group = from_environment(dict(os.environ), device)
    if group.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return replace(ctx, group=group, device=device if group.world > 1 else None)


def cmd_meta_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    ctx = context(config, args.quiet)
    summary = runs.meta_train(config, ctx, resume=args.resume)
    if args.test and ctx.group.main:
        print(json.dumps(runs.meta_test(Path(summary["run_dir"]), ctx, checkpoint="best")))
    return 0


def cmd_meta_test(args: argparse.Namespace) -> int:
    result = runs.meta_test(Path(args.run_dir), context(None, args.quiet), n_tasks=args.tasks,
                            checkpoint=args.checkpoint, dataset=args.dataset)
    print(json.dumps(result))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise MetaticketError(f"--resume {run_dir}: not a run folder (no config.yaml); pass the folder train wrote")
        config = load_run_config(run_dir / "config.yaml", args.set) if args.config is None else \
            load_config(args.config, args.set)
    else:
        if args.config is None:
            raise MetaticketError("train needs a CONFIG file (or --resume RUN_DIR)")
        config = load_config(args.config, args.set)
        run_dir = None
    ctx = context(config, args.quiet)
    summary = runs.train(config, ctx, resume_dir=run_dir)
    if ctx.group.main:
        print(json.dumps(runs.evaluate(Path(summary["run_dir"]), ctx)))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    print(json.dumps(runs.evaluate(Path(args.run_dir), context(None, args.quiet))))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's network as a compact ticket and check that the rebuilt network computes the same outputs."""
    out = Path(args.output) if args.output else None
    print(json.dumps(runs.export(Path(args.run_dir), out, args.checkpoint)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Train and test one run per point of methods x widths x sparsities x seeds (see :func:`runs.sweep`)."""
    table = runs.sweep(args.config, context(None, args.quiet), args.set, methods=args.methods, widths=args.widths,
                       sparsities=args.sparsities, seeds=args.seeds)
    print(table["markdown"], file=sys.stderr)
    print(json.dumps({k: v for k, v in table.items() if k != "markdown"}))
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """Print the names of the shipped configs (usable in place of a path), one per line."""
    for name in shipped_configs():
        if not args.filter or args.filter in name:
            print(name)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from metaticket.runs.plots import plot_runs

    dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.output) if args.output else dirs[0] / "curves.png"
    try:
        plot_runs(dirs, out)
    except ImportError:
        raise MetaticketError("plot needs matplotlib: pip install 'metaticket[plot]' (or matplotlib)") from None
    print(out)
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


def parser(prog: str = "run.py") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="metaticket: sparse tickets in random networks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("meta-train", help="meta-train a few-shot learner from a YAML config")
    t.add_argument("config", help="YAML config file, or a shipped config's name (run.py configs lists them)")
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
    r.add_argument("config", nargs="?", default=None, help="YAML config with run.kind: train (see configs/)")
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
    c = sub.add_parser("configs", help="list the shipped configs: names that work in place of a CONFIG path")
    c.add_argument("filter", nargs="?", default="", help="only names containing this text, e.g. omniglot/paper")
    c.set_defaults(func=cmd_configs)
    w = sub.add_parser("sweep", help="train and test one run per point of methods x widths x sparsities x seeds")
    w.add_argument("config", help="YAML config; a {method} in the path picks one file per --methods value")
    w.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the config's run.seed")
    w.add_argument("--methods", nargs="+", default=None, help="values of meta.method or train.method")
    w.add_argument("--widths", type=float, nargs="+", default=None, help="values of model.width")
    w.add_argument("--sparsities", type=float, nargs="+", default=None,
                   help="pruned fractions: model.sparsity of top-k masks, model.random_sparsity of random masks")
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


def _prog() -> str:
    """How the user started us, for usage lines: run.py, the metaticket console script or python -m metaticket."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return {"__main__.py": "python -m metaticket", "metaticket": "metaticket"}.get(name, "run.py")


def main(argv: list[str] | None = None) -> int:
    args = parser(_prog()).parse_args(argv)
    threading.excepthook = _thread_excepthook
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except (ConfigError, MetaticketError) as e:
        # one line, and the last one printed, whatever a wrapped library message held
        print("error: " + " ".join(part.strip() for part in str(e).splitlines() if part.strip()), file=sys.stderr)
        return 2
    except OSError as e:  # a full disk (or quota) while writing logs, events or results
        if e.errno in READ_ONLY_ERRNOS:
            print(f"error: cannot write {e.filename or 'a run file'} ({e.strerror}): the folder is read-only; copy "
                  f"the run to a writable folder (or point run.out_dir / METATICKET_CACHE at one)", file=sys.stderr)
            return 2
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
