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

``--roofline`` adds, for the paper cases, the budget this machine could reach at best: the meta-step's op-by-op
roofline (``benchmarks/roofline.py``: every aten op of one step of the same method, cell and score gradient at
``max(FLOPs / matmul peak, bytes / memory rate)``, peaks from ``--peak``, this CPU's ``benchmarks/peak.py`` result)
in place of the measured ms per step, validations and test as measured. ``roof_budget_hours_cache`` uses the
cache-resident elementwise rate, ``roof_budget_hours_memory`` the main-memory one. A budget target below the
first cannot be met by faster kernels, only by an op sequence with fewer FLOPs or bytes.

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


def roof(row: dict, peak_path: Path) -> dict:
    """The op-by-op roofline of one meta-step of ``row``'s paper case (method, width, second order, meta-batch,
    queries; Meta-ticket with the config's score gradient) and the paper budget at it: ms per step and hours at the
    cache and the memory rate, and the peaks used."""
    import roofline

    config = load(row["case"])
    impl = "ours-maml" if config.meta.method == "maml" else \
        "ours-metaticket-threshold" + ("-start" if config.meta.score_grad == "start" else "")
    impl += "-bf16" if row["precision"] == "bfloat16" else ""
    if impl not in roofline.OURS:
        raise SystemExit(f"--roofline: benchmarks/meta_step.py has no implementation {impl} for case {row['case']}")
    cell = (f"mlp-w{config.model.width:g}" if config.model.width != 1 else "mlp",
            "first" if config.meta.first_order else "second", config.meta.meta_batch, config.data.queries)
    ops = roofline.census(impl, *cell)
    peak = roofline.peaks_from(peak_path)
    rest_s = row["paper_steps"] // row["paper_val_every"] * row["validation_s"] + row["test_s_estimate"]
    gflop = sum(o["flops"] for o in ops.values()) / 1e9
    out = {"roof_impl": impl, "roof_cell": list(cell), "roof_gflop": round(gflop, 3), "roof_peak": peak,
           "roof_peak_cpu": json.loads(peak_path.read_text()).get("cpu")}
    for where, rate in (("cache", peak["cache_gbs"]), ("memory", peak["memory_gbs"])):
        ms = roofline.roof_ms(ops, peak, rate)
        out[f"roof_ms_{where}"] = round(ms, 1)
        out[f"roof_budget_hours_{where}"] = round((row["paper_steps"] * ms / 1000 + rest_s) / 3600, 3)
    return out


def load(case: str):  # noqa: ANN201 (metaticket's Config, imported late for --code)
    from metaticket.config import load_config

    return load_config(CASES[case][0], CASES[case][1])


def table(rows: list[dict]) -> str:
    lines = ["| case | model | method | B | queries | label | precision | meta-step ms | train ms/step (e2e) | "
             "steps/s | one validation s | paper budget (h) | roofline ms/step, cache / memory rate | "
             "budget at the roofline (h), cache / memory rate |", "|---" * 14 + "|"]
    for r in rows:
        roofs = (f"{r['roof_ms_cache']:.1f} / {r['roof_ms_memory']:.1f} | {r['roof_budget_hours_cache']:.2f} / "
                 f"{r['roof_budget_hours_memory']:.2f}") if "roof_ms_cache" in r else " | "
        lines.append(f"| {r['case']} | {r['model']} | {r['method']} | {r['meta_batch']} | {r['queries']} | "
                     f"{r['label']} | {r['precision']} | {r['meta_step_ms']:.0f} | {r['train_ms_per_step']:.0f} | "
                     f"{r['steps_per_s']:.2f} | {r['validation_s']:.1f} | {r['paper_budget_hours']:.2f} | {roofs} |")
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
    p.add_argument("--roofline", action="store_true",
                   help="add the paper cases' budget at the meta-step's op-by-op roofline (peaks from --peak)")
    p.add_argument("--peak", default=str(RESULTS / "peak.json"), help="benchmarks/peak.py's result on this CPU")
    args = p.parse_args()
    if args.roofline and args.code:
        p.error("--roofline counts the ops of this checkout's code: run it without --code")
    if args.roofline and not Path(args.peak).is_file():
        p.error(f"no peak result at {args.peak}: run python benchmarks/peak.py first (or pass --peak)")
    if args.roofline and any(not c.startswith("paper-") for c in args.cases):
        p.error("--roofline applies to the paper cases only (the quickstart's model is not the paper MLP cell)")
    sys.path.insert(0, str(Path(args.code).resolve()) if args.code else str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    out = Path(args.results) / f"{args.name}.json"
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    for case in args.cases:
        for precision in args.precisions:
            row = {**measure(case, precision, args.steps), "label": args.label}
            if args.roofline:
                row |= roof(row, Path(args.peak))
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if (r["case"], r["precision"], r["label"]) != (case, precision, args.label)]
            rows.append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
