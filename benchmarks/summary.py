"""Plots over the results already in benchmarks/results/ (no training): accuracy vs meta-steps, accuracy vs width.

    python benchmarks/summary.py [--results benchmarks/results]

Writes ``summary_meta_steps.png`` (validation accuracy of every Omniglot MLP 5-way 1-shot run against its
meta-steps, the test accuracy of its best checkpoint as a marker at the end, the published MAML anchor as a band)
and ``summary_width.png`` (test accuracy vs width: Omniglot MLP MAML / Meta-ticket at 2,000 meta-steps, CIFAR-10
Conv6 dense / edge-popup / IteRand at 1 and 5 epochs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MAML_OMNIGLOT_MLP_5W1S = (89.7, 1.1)  # Finn et al. 2017, Table 1

OMNIGLOT_RUNS = {  # result file -> label
    "omniglot_mlp_5w1s_maml.json": "MAML, 10k steps x 32 tasks",
    "omniglot_mlp_5w1s_metaticket.json": "Meta-ticket, 14k steps x 16 tasks",
    "omniglot_mlp_5w1s_metaticket_30k.json": "Meta-ticket, 30k steps x 4 tasks (paper budget)",
    "omniglot_mlp-w1_5w1s_2k_maml.json": "MAML, 2k x 16",
    "omniglot_mlp-w1_5w1s_2k_metaticket.json": "Meta-ticket, 2k x 16",
    "omniglot_mlp-w4_5w1s_2k_maml.json": "MAML width 4, 2k x 16",
    "omniglot_mlp-w4_5w1s_2k_metaticket.json": "Meta-ticket width 4, 2k x 16",
}


def load(results: Path, name: str) -> dict:
    path = results / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the benchmark that writes it (see benchmarks/README.md)")
    return json.loads(path.read_text())


def plot_meta_steps(results: Path, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    mean, ci = MAML_OMNIGLOT_MLP_5W1S
    ax.axhspan(mean - ci, mean + ci, color="gray", alpha=0.2, label=f"MAML paper {mean} +- {ci} (60k steps)")
    for name, label in OMNIGLOT_RUNS.items():
        run = load(results, name)
        steps = [p["step"] for p in run["val_curve"]]
        line, = ax.plot(steps, [p["acc"] for p in run["val_curve"]], marker=".", label=label)
        test = run["test"]
        ax.errorbar([steps[-1]], [test["accuracy"]], yerr=[test["ci95"]], fmt="*", ms=10, color=line.get_color())
    ax.set_xlabel("meta-steps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Omniglot 5-way 1-shot MLP (width 1 unless noted): validation (lines), test of the best "
                 "checkpoint (stars)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_width(results: Path, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, label in (("maml", "MAML"), ("metaticket", "Meta-ticket")):
        points = [(w, load(results, f"omniglot_mlp-w{w}_5w1s_2k_{method}.json")["test"]) for w in (1, 4)]
        left.errorbar([w for w, _ in points], [t["accuracy"] for _, t in points], yerr=[t["ci95"] for _, t in points],
                      marker="o", capsize=4, label=label)
    left.set_xscale("log", base=2)
    left.set_xlabel("MLP width factor")
    left.set_ylabel("test accuracy (%), 600 tasks")
    left.set_title("Omniglot 5w1s, 2,000 meta-steps x 16 tasks", fontsize=10)
    for name, style in (("cifar10_conv6_1ep.json", "--"), ("cifar10_conv6_5ep.json", "-")):
        epochs = 1 if "1ep" in name else 5
        groups = load(results, name)["groups"]
        for method in dict.fromkeys(g["method"] for g in groups):
            rows = sorted((g for g in groups if g["method"] == method), key=lambda g: g["width"])
            right.errorbar([g["width"] for g in rows], [g["accuracy"] for g in rows], yerr=[g["ci95"] for g in rows],
                           marker="o", linestyle=style, capsize=3, label=f"{method}, {epochs} epoch(s)")
    right.set_xscale("log", base=2)
    right.set_xlabel("Conv6 width factor")
    right.set_ylabel("test top-1 (%), 10,000 images")
    right.set_title("CIFAR-10 Conv6, sparsity 0.5", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    results = Path(args.results)
    plot_meta_steps(results, results / "summary_meta_steps.png")
    plot_width(results, results / "summary_width.png")
    print(results / "summary_meta_steps.png", results / "summary_width.png")


if __name__ == "__main__":
    main()
