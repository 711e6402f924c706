"""Collect the CIFAR-10 seed-method runs (Slot Machines, fixed random masks) into one results file and plot.

Reads the ``sweep.json`` that ``run.py sweep`` wrote for each run name below (``<runs>/<name>-sweep/sweep.json``)
and writes ``results/cifar10_seed_methods.{json,md,png}``: the rows of the tables in benchmarks/README.md and a
plot of test accuracy against overall sparsity, one line per ratio rule (Conv6), with the dense, edge-popup and
Slot Machine runs of the same budget as reference marks.

    python benchmarks/seed_methods.py --runs runs
    python benchmarks/seed_methods.py --time 30   # also: ms per training iteration of each method, measured alone

``--time N`` times N SGD iterations (after 5 warm-up ones) of each method's Conv6 w0.25 on a random batch of 128
CIFAR-sized images (channels-last, as ``run.py train`` does), one method after another in this process (some
sweeps' own ms/iter were measured while other jobs shared the machine), and writes
``results/cifar10_seed_methods_time.json``.

The commands that produce the runs are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RULES = ("uniform", "er", "erk", "balanced", "pyramidal")


AT_09 = [  # plain edge-popup / IteRand at overall sparsity 0.9, 5 epochs: init scaling and learning rate
    ("cifar10_conv6_edgepopup_s0.9_5ep", "edge-popup"),
    ("cifar10_conv6_edgepopup_s0.9_lr0.1_5ep", "edge-popup, lr 0.1"),
    ("cifar10_conv6_edgepopup_s0.9_scalefan_5ep", "edge-popup, scaled init"),
    ("cifar10_conv6_edgepopup_s0.9_scalefan_lr0.1_5ep", "edge-popup, scaled init, lr 0.1"),
    ("cifar10_conv6_iterand_s0.9_scalefan_5ep", "IteRand, scaled init"),
    ("cifar10_conv6_iterand_s0.9_scalefan_lr0.1_5ep", "IteRand, scaled init, lr 0.1"),
]


def _rows_of(runs: Path, name: str, only: str | None = None, earlier: list[dict] | None = None,
            **labels: object) -> list[dict]:
    """Rows of one sweep's groups at width 0.25; `only` keeps the groups of one sweep method.

    A sweep missing under ``runs`` is an error, unless ``earlier`` (the rows of an earlier results file) holds
    its rows: those are kept, marked ``"source": "earlier results"``.
    """
    path = runs / f"{name}-sweep" / "sweep.json"
    if not path.is_file():
        kept = [r for r in earlier or [] if r["run"] == name and r["method"] == labels.get("method")]
        if kept:
            return [{**r, "source": "earlier results"} for r in kept]
        raise SystemExit(f"{path} is missing: run the sweep for {name} first (commands in benchmarks/README.md)")
    table = json.loads(path.read_text())
    return [{**labels, "run": name, "accuracy": g["accuracy"], "ci95": g["ci95"], "sparsity": g["sparsity"],
             "width": g["width"], "train_minutes": g.get("train_minutes"), "ms_per_iter": g.get("ms_per_iter"),
             "source": str(path)}
            for g in table["groups"] if g["width"] == 0.25 and (only is None or g["method"] == only)]


def collect(runs: Path, earlier: list[dict] | None = None) -> list[dict]:
    """Every row of the tables, read from the sweeps under ``runs`` (see :func:`_rows_of` for ``earlier``)."""
    rows: list[dict] = []
    rows_of = functools.partial(_rows_of, runs, earlier=earlier)
    rows += rows_of("cifar10_conv6_dense_5ep", model="conv6", method="dense", epochs=5)
    rows += rows_of("cifar10_conv6_dense_2ep", model="conv6", method="dense", epochs=2)
    rows += rows_of("cifar10_resnet18_dense_1ep", model="resnet18", method="dense", epochs=1)
    for k in (2, 8):
        for sel in ("greedy", "sampled"):
            rows += rows_of(f"cifar10_conv6_slot_k{k}_{sel}_5ep", model="conv6", method=f"slot K={k} {sel}",
                            epochs=5)
        # the authors' settings for sampled selection on Conv6: score lr 25, no weight decay
        rows += rows_of(f"cifar10_conv6_slot_k{k}_sampled_lr25_5ep", model="conv6",
                        method=f"slot K={k} sampled, lr 25", epochs=5)
    for k in (2, 8):  # the chosen values fine-tuned as ordinary weights (train.init_from), 2 more epochs
        rows += rows_of(f"cifar10_conv6_slot_k{k}_greedy_finetune_2ep", model="conv6",
                        method=f"slot K={k} greedy, fine-tuned", epochs="5+2")
    for rule in RULES:
        rows += rows_of(f"cifar10_conv6_randommask_{rule}_2ep", model="conv6", method="randommask",
                        ratios=rule, epochs=2)
        rows += rows_of(f"cifar10_resnet18_randommask_{rule}_1ep", model="resnet18", method="randommask",
                        ratios=rule, epochs=1)
    rows += rows_of("cifar10_conv6_5ep", only="edgepopup", model="conv6", method="edge-popup", epochs=5)
    rows += rows_of("cifar10_conv6_5ep", only="iterand", model="conv6", method="IteRand", epochs=5)
    for name, label in AT_09:
        rows += rows_of(name, model="conv6", method=label, epochs=5)
    for rule in ("erk", "balanced"):
        rows += rows_of(f"cifar10_conv6_randommask_edgepopup_{rule}_5ep", model="conv6",
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

    n_bars = sum(1 for r in rows if str(r["epochs"]).startswith("5") and r["model"] == "conv6")
    fig, axes = plt.subplots(1, 3, figsize=(17, max(4.0, 0.3 * n_bars + 1)), width_ratios=[1, 1, 1.4],
                             layout="constrained")  # tight_layout spread the long bar labels over every gap
    for ax, model, epochs, label in ((axes[0], "conv6", 2, "Conv6"), (axes[1], "resnet18", 1, "ResNet-18")):
        for rule in RULES:
            pts = sorted((r["sparsity"], r["accuracy"], r["ci95"]) for r in rows
                         if r["model"] == model and r["method"] == "randommask" and r["ratios"] == rule)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=rule)
        for r in rows:
            if r["model"] == model and r["method"] == "dense" and r["epochs"] == epochs:
                ax.axhline(r["accuracy"], color="black", ls="--", lw=1, label="dense (sparsity 0)")
        ax.set_xlabel("overall sparsity of the fixed random mask")
        ax.set_ylabel("CIFAR-10 test top-1 (%)")
        ax.set_title(f"{label} w0.25: weights trained under\na fixed random mask, {epochs} epoch{'s' * (epochs > 1)}")
        ax.legend()
        ax.grid(alpha=0.3)
    ax = axes[2]
    ref = [r for r in rows if str(r["epochs"]).startswith("5") and r["model"] == "conv6"]
    names = [r["method"] + (f" {r['ratios']}" if r.get("ratios") else "")
             + (f", sparsity {r['sparsity']:.1f}" if r["sparsity"] > 0 else "") for r in ref]
    ax.barh(range(len(ref)), [r["accuracy"] for r in ref], xerr=[r["ci95"] for r in ref], color="tab:gray")
    ax.set_yticks(range(len(ref)), names, fontsize=8)
    ax.set_xlabel("CIFAR-10 test top-1 (%)")
    ax.set_title("Conv6 w0.25, 5 epochs (fine-tuned: 5 + 2)\n(slot machines prune nothing: sparsity 0)")
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(path, dpi=120)
    plt.close(fig)


TIMED = [  # (label, config, overrides)
    ("dense", "conv6_dense.yaml", []),
    ("edge-popup", "conv6_edgepopup.yaml", []),
    ("IteRand (re-sampling not included)", "conv6_iterand.yaml", []),
    ("slot K=2 greedy", "conv6_slot_k2_greedy.yaml", []),
    ("slot K=8 greedy", "conv6_slot_k8_greedy.yaml", []),
    ("slot K=8 sampled", "conv6_slot_k8_sampled.yaml", []),
    ("randommask, weights (erk 0.8)", "conv6_randommask.yaml", []),
    ("randommask, edge-popup inside (erk 0.8)", "conv6_randommask_edgepopup.yaml", []),
]


def time_methods(iters: int, width: float = 0.25, batch: int = 128) -> list[dict]:
    """Median ms of one training iteration (forward, backward, SGD step) of each method in ``TIMED``."""
    import statistics
    import time

    import torch

    from metaticket.baselines.train import trainable
    from metaticket.config import load_config
    from metaticket.runs.factory import build_classifier

    configs = Path(__file__).resolve().parent.parent / "configs" / "cifar10"
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    out = []
    for label, name, extra in TIMED:
        config = load_config(configs / name, [f"model.width={width}", *extra])
        model = build_classifier(config, 10).train().to(memory_format=torch.channels_last)  # as train does
        opt = torch.optim.SGD(trainable(model, config.train.method, config.train.randommask_learns), lr=1e-3,
                              momentum=0.9)
        times = []
        for i in range(5 + iters):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if i >= 5:
                times.append(1000 * (time.perf_counter() - t0))
        out.append({"method": label, "config": name, "width": width, "batch": batch, "iters": iters,
                    "ms_per_iter": round(statistics.median(times), 1), "threads": torch.get_num_threads()})
        print(f"{label:45s} {out[-1]['ms_per_iter']:8.1f} ms/iter")
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the run.out_dir the sweeps wrote to")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="cifar10_seed_methods")
    parser.add_argument("--time", type=int, default=0, metavar="N",
                        help="also time N training iterations of each method (0: skip)")
    parser.add_argument("--time-width", type=float, default=0.25, help="Conv6 width for --time")
    parser.add_argument("--keep-missing", action="store_true",
                        help="keep the rows of sweeps not found under --runs from the existing results JSON "
                             "(marked 'source: earlier results') instead of stopping")
    args = parser.parse_args(argv)
    if args.time:
        timed = time_methods(args.time, args.time_width)
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / f"{args.name}_time.json").write_text(json.dumps({"rows": timed}, indent=2) + "\n")
    out = args.results / f"{args.name}.json"
    earlier = json.loads(out.read_text())["rows"] if args.keep_missing and out.is_file() else None
    rows = collect(args.runs, earlier)
    for r in rows:
        if r["source"] == "earlier results":
            print(f"kept from {out.name}: {r['run']} ({r['method']}, sparsity {r['sparsity']:.2f})")
    args.results.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    (args.results / f"{args.name}.md").write_text(markdown(rows))
    plot(rows, args.results / f"{args.name}.png")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
