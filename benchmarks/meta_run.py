"""Benchmark: meta-train a config, meta-test it on 600 tasks, write JSON + a learning-curve PNG.

    python benchmarks/meta_run.py configs/omniglot/mlp_5w1s_metaticket.yaml --tag NAME [--set k=v ...]

Writes ``benchmarks/results/<tag>.json`` (config overrides, wall time, ms per meta-step, peak RSS,
validation curve, meta-test accuracy with 95% CI) and ``benchmarks/results/<tag>.png``.
Data comes from ``$METATICKET_DATA`` as for ``run.py``. Training and testing run in this process through
``metaticket.runs.commands`` (the functions ``run.py`` calls); a relative config path is read from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from metaticket.config import ConfigError, load_config  # noqa: E402
from metaticket.errors import MetaticketError  # noqa: E402
from metaticket.runs import commands as runs  # noqa: E402


def curve(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "acc": r["acc"], "ci95": r["ci95"], "sparsity": r.get("sparsity")}
            for r in rows if r["split"] == "val"]


def plot(points: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [p["step"] for p in points]
    acc = [p["acc"] for p in points]
    ax.errorbar(steps, acc, yerr=[p["ci95"] for p in points], marker="o", capsize=3, label="validation accuracy")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if any(p["sparsity"] for p in points):
        ax2 = ax.twinx()
        ax2.plot(steps, [p["sparsity"] or 0 for p in points], color="tab:red", linestyle="--", label="sparsity")
        ax2.set_ylabel("sparsity (fraction pruned)", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--tag", required=True, help="result file name")
    p.add_argument("--set", action="append", default=[], help="config override section.key=value")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON and PNG")
    args = p.parse_args(argv)
    run_dir = ROOT / "runs" / "bench" / args.tag
    if run_dir.exists():
        sys.exit(f"{run_dir} exists; remove it or choose another --tag")
    config_path = Path(args.config) if Path(args.config).is_absolute() else ROOT / args.config
    ctx = runs.Context.from_environment(os.environ, quiet=False)
    t0 = time.time()
    try:
        config = load_config(config_path, [*args.set, f"run.out_dir={run_dir.parent}", f"run.name={args.tag}"])
        summary = runs.meta_train(config, ctx)
        train_minutes = (time.time() - t0) / 60
        test = runs.meta_test(Path(summary["run_dir"]), ctx, n_tasks=args.tasks)
    except (ConfigError, MetaticketError) as e:
        sys.exit(f"error: {e}")
    points = curve(run_dir)
    torch_version = torch.__version__
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"tag": args.tag, "config": args.config, "overrides": args.set, "train_minutes": round(train_minutes, 2),
              "ms_per_meta_step": round(summary["ms_per_step"], 1), "steps": summary["steps"],
              "best_val_accuracy": summary["best_val_accuracy"], "best_step": summary["best_step"],
              "peak_rss_mb": round(peak_rss_mb, 1), "test": test, "val_curve": points,
              "machine": f"{os.cpu_count()} CPU cores, torch {torch_version}"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(points, f"{args.tag}: test {test['accuracy']:.1f} +- {test['ci95']:.1f}% ({test['tasks']} tasks)",
         out / f"{args.tag}.png")
    print(json.dumps({k: result[k] for k in ("tag", "train_minutes", "ms_per_meta_step", "steps")} | {
        "accuracy": test["accuracy"], "ci95": test["ci95"]}))
    return result


if __name__ == "__main__":
    main()
