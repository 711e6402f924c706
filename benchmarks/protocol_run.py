"""What the protocol benchmarks (paper_protocol.py, reference_grid.py) share: one meta-training run that resumes or
restarts, is meta-tested on its last checkpoint, and leaves a result line naming its whole protocol."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaticket.config import load_config, load_run_config  # noqa: E402
from metaticket.hardware import cpu_info  # noqa: E402
from metaticket.runs import commands as runs  # noqa: E402


def train_and_test(config: str | Path, sets: list[str], folder: Path, test_tasks: int | None = None,
                   ) -> tuple[dict, float | None]:
    """Meta-train ``config`` with ``sets`` into ``folder`` (``run.out_dir``/``run.name`` are set from it), resuming
    from its last checkpoint, or starting again in the same folder if it was killed before its first one; meta-test
    the last checkpoint (on ``test_tasks``, default the config's) into ``meta_test_last.json``. Returns the meta-test
    line and the minutes it took, None if the run had already been tested."""
    result = folder / "meta_test_last.json"
    if result.is_file():
        return json.loads(result.read_text()), None
    started = time.perf_counter()
    ctx = runs.Context.from_environment(os.environ)
    if not (folder / "train_summary.json").is_file():
        resume = (folder / "checkpoints" / "last.pt").is_file()
        if not resume and folder.exists():
            shutil.rmtree(folder)
        sets = [*sets, f"run.out_dir={folder.parent}", f"run.name={folder.name}"]
        runs.meta_train(load_config(config, sets), ctx, resume=resume)
    line = last_checkpoint_test(folder, ctx, test_tasks)
    return line, (time.perf_counter() - started) / 60


def last_checkpoint_test(folder: Path, ctx: runs.Context, n_tasks: int | None = None,
                         dataset: str | None = None) -> dict:
    """The meta-test line of ``folder``'s last checkpoint on ``n_tasks`` tasks of its own data set, or of
    ``dataset`` (cross-domain), kept in ``meta_test_last[_<dataset>].json`` so a finished test is not run again."""
    path = folder / (f"meta_test_last_{dataset}.json" if dataset else "meta_test_last.json")
    if not path.is_file():
        line = runs.meta_test(folder, ctx, n_tasks=n_tasks, checkpoint="last", dataset=dataset)
        path.write_text(json.dumps(line) + "\n")
    return json.loads(path.read_text())


def metric_of(line: dict) -> str:
    """The metric a meta-test line reports: ``accuracy`` (classification) or ``mse`` (regression)."""
    return "accuracy" if "accuracy" in line else "mse"


def protocol(folder: Path, line: dict, minutes: float) -> dict:
    """The fields every result line carries, read from the run's own config and summary: split, score gradient,
    precision, queries, checkpoint, budget, inner loop, sparsity, speed, threads, CPU, torch, commit and date."""
    c = load_run_config(folder / "config.yaml")
    summary = json.loads((folder / "train_summary.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    masked = c.meta.method.startswith("metaticket")
    return {"split": c.data.split if c.data.dataset == "omniglot" else None,
            "score_grad": c.meta.score_grad if masked else None, "precision": c.meta.precision,
            "first_order": c.meta.first_order,
            "queries": c.data.queries, "checkpoint": line["checkpoint"], "meta_steps": c.meta.steps,
            "meta_batch": c.meta.meta_batch, "inner_lr": c.meta.inner_lr, "inner_steps": c.meta.inner_steps,
            "inner_steps_test": c.meta.inner_steps_test, "ci95": line["ci95"], "tasks": line["tasks"],
            "sparsity": line["sparsity"], "ms_per_step": round(summary["ms_per_step"], 1),
            "minutes": round(minutes, 1), "threads": c.run.threads, "cpu": cpu_info(),
            "torch": __import__("torch").__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def append(record: Path | None, line: dict) -> None:
    """Append one JSON line to ``record`` (nothing without one)."""
    if record is not None:
        with open(record, "a") as f:
            f.write(json.dumps(line) + "\n")
