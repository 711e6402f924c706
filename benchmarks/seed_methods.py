"""Collect the CIFAR-10 seed-method runs (Slot Machines, fixed random masks) into one results file and plot.

Reads the ``sweep.json`` that ``run.py sweep`` wrote for each run name below (``<runs>/<name>-sweep/sweep.json``)
and writes ``results/cifar10_seed_methods.{json,md,png}``: the rows of the tables in benchmarks/README.md and a
plot of test accuracy against overall sparsity, one line per ratio rule (Conv6), with the dense, edge-popup and
Slot Machine runs of the same budget as reference marks.

    python benchmarks/seed_methods.py --runs runs

The commands that produce the runs are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RULES = ("uniform", "er", "erk", "balanced", "pyramidal")


def rows_of(runs: Path, name: str, **labels: object) -> list[dict]:
    path = runs / f"{name}-sweep" / "sweep.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the sweep for {name} first (commands in benchmarks/README.md)")
    table = json.loads(path.read_text())
    return [{**labels, "run": name, "accuracy": g["accuracy"], "ci95": g["ci95"], "sparsity": g["sparsity"],
             "width": g["width"], "train_minutes": g.get("train_minutes"), "ms_per_iter": g.get("ms_per_iter")}
            for g in table["groups"]]


def collect(runs: Path) -> list[dict]:
    rows: list[dict] = []
    rows += rows_of(runs, "cifar10_conv6_dense_5ep", model="conv6", method="dense", epochs=5)
    rows += rows_of(runs, "cifar10_conv6_dense_2ep", model="conv6", method="dense", epochs=2)
    rows += rows_of(runs, "cifar10_resnet18_dense_1ep", model="resnet18", method="dense", epochs=1)
    for k in (2, 8):
        for sel in ("greedy", "sampled"):
            rows += rows_of(runs, f"cifar10_conv6_slot_k{k}_{sel}_5ep", model="conv6", method=f"slot K={k} {sel}",
                            epochs=5)
    for rule in RULES:
        rows += rows_of(runs, f"cifar10_conv6_randommask_{rule}_2ep", model="conv6", method="randommask",
                        ratios=rule, epochs=2)
        rows += rows_of(runs, f"cifar10_resnet18_randommask_{rule}_1ep", model="resnet18", method="randommask",
                        ratios=rule, epochs=1)
    rows += rows_of(runs, "cifar10_conv6_edgepopup_s0.9_5ep", model="conv6", method="edge-popup", epochs=5)
    for rule in ("erk", "balanced"):
        rows += rows_of(runs, f"cifar10_conv6_randommask_edgepopup_{rule}_5ep", model="conv6",
                        method="edge-popup inside random mask", ratios=rule, epochs=5)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | method | ratios | epochs | overall sparsity | test top-1 (%) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} w{r['width']} | {r['method']} | {r.get('ratios', '')} | {r['epochs']} | "
                     f"{r['sparsity']:.3f} | {r['accuracy']:.2f} +- {r['ci95']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for rule in RULES:
        pts = sorted((r["sparsity"], r["accuracy"], r["ci95"]) for r in rows
                     if r["model"] == "conv6" and r["method"] == "randommask" and r["ratios"] == rule)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=rule)
    for r in rows:
        if r["model"] == "conv6" and r["method"] == "dense" and r["epochs"] == 2:
            ax.axhline(r["accuracy"], color="black", ls="--", lw=1, label="dense (sparsity 0)")
    ax.set_xlabel("overall sparsity of the fixed random mask")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title("Conv6 w0.25, weights trained under a random mask, 2 epochs")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    ref = [r for r in rows if r["epochs"] == 5 and r["model"] == "conv6"]
    names = [r["method"] + (f" ({r['ratios']})" if r.get("ratios") else "") for r in ref]
    ax.barh(range(len(ref)), [r["accuracy"] for r in ref], xerr=[r["ci95"] for r in ref], color="tab:gray")
    ax.set_yticks(range(len(ref)), names, fontsize=8)
    ax.set_xlabel("CIFAR-10 test top-1 (%)")
    ax.set_title("Conv6 w0.25, 5 epochs")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the run.out_dir the sweeps wrote to")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="cifar10_seed_methods")
    args = parser.parse_args(argv)
    rows = collect(args.runs)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    (args.results / f"{args.name}.md").write_text(markdown(rows))
    plot(rows, args.results / f"{args.name}.png")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
