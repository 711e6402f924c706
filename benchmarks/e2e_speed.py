"""Benchmark: end-to-end meta-training speed (task sampling, the meta-step, logging and validation included) and
the time the paper budget takes, for the quickstart and the paper-protocol Omniglot runs.

    python benchmarks/e2e_speed.py [--cases quickstart paper-w1 ...] [--precisions float32 bfloat16]
                                   [--steps 300] [--label after] [--code DIR] [--name e2e_speed]

Each case meta-trains its config in this process (``metaticket.runs.commands.meta_train``) for ``--steps``
steps, logging and validating every ``--steps / 3`` steps on the config's own ``eval.val_tasks``. From the
callbacks' clock: ``train_ms_per_step`` is the wall time between the first and the last log line, validations
excluded, per step (sampling, copies, the meta-step, logging); ``validation_s`` the median time of one
validation. The paper budget is ``meta.steps`` of the paper config (30,000) times the first plus one validation
every ``eval.val_every`` and the final meta-test (``eval.test_tasks`` tasks at a validation's rate per task).

``--code DIR`` imports metaticket from DIR (a git worktree of an earlier commit: the "before" rows); the
precision option does not exist there, so only float32 runs. Rows are appended to
``benchmarks/results/<name>.json`` under ``--label``; the table (``.md``) is rewritten from all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAPER = ROOT / "configs" / "omniglot" / "paper"
CASES = {
    "quickstart": (ROOT / "configs" / "omniglot" / "quickstart.yaml", []),
    **{f"paper-w{w}-{m}": (PAPER / f"mlp-w{w}_5w1s_{m}.yaml" if w > 1 else PAPER / f"mlp-w1_5w1s_{m}.yaml", [])
       for w in (1, 2, 4, 8) for m in ("maml", "metaticket")},
}


def measure(case: str, precision: str, steps: int) -> dict:
    import torch

    import metaticket
    from metaticket.config import load_config
    from metaticket.runs import commands as runs
    from metaticket.runs.loop import Callbacks

    path, sets = CASES[case]
    every = max(1, steps // 3)
    clock: list[tuple[str, int, float]] = []
    calls = Callbacks(on_log=lambda step, _: clock.append(("log", step, time.perf_counter())),
                      on_validate=lambda step, _: clock.append(("val", step, time.perf_counter())))
    paper = load_config(path)
    with tempfile.TemporaryDirectory() as out:
        extra = [] if precision == "float32" else [f"meta.precision={precision}"]
        config = load_config(path, [*sets, *extra, f"meta.steps={steps}", f"run.log_every={every}",
                                    f"eval.val_every={every}", "meta.warmup_steps=0", f"run.out_dir={out}",
                                    "run.name=e2e"])
        t0 = time.perf_counter()
        summary = runs.meta_train(config, runs.Context.from_environment(os.environ), callbacks=calls)
        wall = time.perf_counter() - t0
    vals = [t - next(c for k, s2, c in clock if k == "log" and s2 == s) for k, s, t in clock if k == "val"]
    logs = [(s, t) for k, s, t in clock if k == "log"]
    (s0, t0_), (s1, t1) = logs[0], logs[-1]
    between = sum(vals[:-1])  # the validations after the first log line and before the last one
    train_ms = 1000 * (t1 - t0_ - between) / (s1 - s0)
    val_s = statistics.median(vals)
    # the final meta-test: test_tasks tasks at a validation's rate per task
    test_s = val_s * paper.eval.test_tasks / config.eval.val_tasks
    budget_h = (paper.meta.steps * train_ms / 1000 + paper.meta.steps // paper.eval.val_every * val_s + test_s) / 3600
    from metaticket.hardware import cpu_info
    return {"case": case, "precision": precision, "model": f"{config.model.name} w{config.model.width:g}",
            "method": config.meta.method, "meta_batch": config.meta.meta_batch, "queries": config.data.queries,
            "val_tasks": config.eval.val_tasks, "steps": steps, "meta_step_ms": round(summary["ms_per_step"], 1),
            "train_ms_per_step": round(train_ms, 1), "steps_per_s": round(1000 / train_ms, 2),
            "validation_s": round(val_s, 2), "test_s_estimate": round(test_s, 1),
            "wall_s": round(wall, 1), "paper_steps": paper.meta.steps,
            "paper_val_every": paper.eval.val_every, "paper_budget_hours": round(budget_h, 2),
            "threads": torch.get_num_threads(), "torch": str(torch.__version__), "cpu": cpu_info(),
            "code": str(Path(metaticket.__file__).parent.parent)}


def table(rows: list[dict]) -> str:
    lines = ["| case | model | method | B | queries | label | precision | meta-step ms | train ms/step (e2e) | "
             "steps/s | one validation s | paper budget (h) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['model']} | {r['method']} | {r['meta_batch']} | {r['queries']} | "
                     f"{r['label']} | {r['precision']} | {r['meta_step_ms']:.0f} | {r['train_ms_per_step']:.0f} | "
                     f"{r['steps_per_s']:.2f} | {r['validation_s']:.1f} | {r['paper_budget_hours']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--precisions", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--label", default="after")
    p.add_argument("--code", default=None, help="import metaticket from this folder (an earlier commit)")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default="e2e_speed")
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.code).resolve()) if args.code else str(ROOT))
    out = Path(args.results) / f"{args.name}.json"
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    for case in args.cases:
        for precision in args.precisions:
            row = {**measure(case, precision, args.steps), "label": args.label}
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["case"], r["precision"], r["label"]) != (case, precision, args.label)]
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
