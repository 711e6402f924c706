"""Benchmark: what an IteRand epoch costs against an edge-popup epoch (CIFAR-10 Conv6, the training loop of run.py).

    python benchmarks/iterand_cost.py [--widths 0.25 0.5 1] [--full-epoch-widths 0.25] [--slice 40] [--reps 2]

Two measurements, both through ``metaticket.runs.supervised.train_supervised`` (the code ``run.py train`` runs):

- full epochs (``--full-epoch-widths``): one whole epoch (390 iterations x batch 128) per method, edge-popup and
  IteRand alternating ``--reps`` times, IteRand re-sampling every 300 iterations (the paper's K_per) and every 50
  (the schedule of our one-epoch width benchmark); wall time of the loop, data loading included.
- decomposition (every width): ms per iteration of both methods on a ``--slice``-iteration run with no
  re-randomization due (the same code runs for both: they differ only by noise), and the time of one
  ``rerandomize`` call (median of 10). An IteRand epoch costs an edge-popup epoch plus ``390 / K_per``
  rerandomize calls: ratio ``1 + ms_rerand / (K_per * ms_iter)``.

Writes ``benchmarks/results/iterand_cost.json`` and ``.md``. Data from ``$METATICKET_DATA``; evaluation is cut to
500 test images so that it does not dilute the comparison.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaticket.baselines.train import TrainPlan  # noqa: E402
from metaticket.config import TrainConfig  # noqa: E402
from metaticket.core.supermask import rerandomize  # noqa: E402
from metaticket.data.classification import classification_data  # noqa: E402
from metaticket.models import build_model  # noqa: E402
from metaticket.models.registry import make_layers  # noqa: E402
from metaticket.runs.monitor import Monitor  # noqa: E402
from metaticket.runs.supervised import train_supervised  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAPER_EVERY = 300


def conv6(width: float, seed: int = 0) -> torch.nn.Module:
    layers = make_layers(supermask=True, mask="topk", sparsity=0.5, dense_head=False,
                         generator=torch.Generator().manual_seed(seed), norm="batch", norm_affine=False)
    return build_model("conv6", num_classes=10, image_size=32, width=width, layers=layers)


def run_loop(method: str, width: float, data, test, iterations: int, rerand_every: int) -> dict:
    """Train a fresh Conv6 for ``iterations`` iterations; return ms/iteration (compute) and loop wall seconds."""
    train = TrainConfig(method="edgepopup", epochs=1, batch_size=128, lr=0.3, weight_decay=1e-4,
                        max_iterations=iterations, rerand_every=rerand_every if method == "iterand" else 0,
                        rerand_rate=0.1)
    plan = TrainPlan(train, checkpoint_every=10**9, log_every=10**9, workers=0, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        monitor = Monitor(tmp, quiet=True, tensorboard=False)
        t0 = time.perf_counter()
        summary = train_supervised(conv6(width), data.train, test, data.mean, data.std, plan, Path(tmp), monitor,
                                   torch.device("cpu"))
        wall = time.perf_counter() - t0
        monitor.close()
    return {"ms_per_iter": summary["ms_per_iter"], "wall_s": wall, "iterations": summary["iterations"]}


def rerand_ms(width: float, reps: int = 10) -> float:
    model = conv6(width)
    g = torch.Generator().manual_seed(1)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        rerandomize(model, 0.1, g)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--full-epoch-widths", type=float, nargs="*", default=[0.25])
    p.add_argument("--slice", type=int, default=40, help="iterations per decomposition run")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--results", default=str(RESULTS), help="folder for the results")
    p.add_argument("--name", default="iterand_cost")
    args = p.parse_args()
    root = Path(os.environ.get("METATICKET_DATA", ROOT.parent / "shared" / "data"))
    cache = Path(os.environ.get("METATICKET_CACHE") or Path.home() / ".cache" / "metaticket")
    data = classification_data("cifar10", root, cache, 32, augment=True, seed=0, progress=False)
    test = torch.utils.data.Subset(data.test, range(500))
    per_epoch = len(data.train) // 128
    run_loop("edgepopup", max(args.widths), data, test, 10, 10**9)  # warm-up: allocator, kernels, page cache
    out = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}",
           "per_epoch": per_epoch, "full_epochs": [], "decomposition": []}

    for width in args.full_epoch_widths:
        for every in (PAPER_EVERY, 50):
            walls: dict[str, list[float]] = {"edgepopup": [], "iterand": []}
            for _ in range(args.reps):
                for method in walls:
                    walls[method].append(run_loop(method, width, data, test, per_epoch, every)["wall_s"])
            row = {"width": width, "rerand_every": every, "edgepopup_s": statistics.median(walls["edgepopup"]),
                   "iterand_s": statistics.median(walls["iterand"]), "runs": walls}
            row["ratio"] = row["iterand_s"] / row["edgepopup_s"]
            print(json.dumps(row), flush=True)
            out["full_epochs"].append(row)

    for width in args.widths:
        ms: dict[str, list[float]] = {"edgepopup": [], "iterand": []}
        for _ in range(args.reps):
            for method in ms:  # rerand_every beyond the slice: the pure iteration cost of each method
                ms[method].append(run_loop(method, width, data, test, args.slice, 10**9)["ms_per_iter"])
        t_iter = {m: statistics.median(v) for m, v in ms.items()}
        t_rr = rerand_ms(width)
        row = {"width": width, "edgepopup_ms_iter": t_iter["edgepopup"], "iterand_ms_iter": t_iter["iterand"],
               "rerandomize_ms": t_rr}
        for every in (PAPER_EVERY, 50):
            # an IteRand iteration runs the same code as an edge-popup one (plus a no-op schedule check), so an
            # epoch differs only by its per_epoch / K rerandomize calls; the two measured ms/iter show the noise
            row[f"epoch_ratio_every{every}"] = 1 + t_rr / (every * t_iter["edgepopup"])
        print(json.dumps(row), flush=True)
        out["decomposition"].append(row)

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(out, indent=2))
    lines = ["| measurement | width | K_per (iterations) | edge-popup | IteRand | IteRand / edge-popup |",
             "|---|---|---|---|---|---|"]
    for r in out["full_epochs"]:
        lines.append(f"| whole epoch, wall s (median of {args.reps}) | {r['width']} | {r['rerand_every']} | "
                     f"{r['edgepopup_s']:.1f} | {r['iterand_s']:.1f} | {r['ratio']:.3f} |")
    for r in out["decomposition"]:
        for every in (PAPER_EVERY, 50):
            lines.append(f"| 1 + rerandomize ({r['rerandomize_ms']:.1f} ms) / (K x edge-popup ms/iter) | "
                         f"{r['width']} | {every} | {r['edgepopup_ms_iter']:.0f} ms/iter | "
                         f"{r['iterand_ms_iter']:.0f} ms/iter | {r[f'epoch_ratio_every{every}']:.3f} |")
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
