"""Benchmark: where masked (Meta-ticket) factors stop paying, the measurement behind ``factored.MASKED_FACTOR_MAX``.

    python benchmarks/factored_masks.py [--width 8] [--queries 1 3 5 15] [--meta-batch 16] [--reps 4]

Meta-ticket, second order, 5-way 1-shot, one inner step: the per-task path (what ``auto`` runs without factors:
the loop for wide MLPs) against the factored inner loop forced for every batch size (``MASKED_FACTOR_MAX`` raised),
on the same synthetic tasks, median of ``--reps`` meta-steps after 2 warm-up steps, in this process. Each row
names the (query rows x factor rows) count that :func:`metaticket.meta.factored.fits` compares with the limit
(4 factor rows per 5 support rows: the MLP's masked layers feed task BatchNorms) and whether ``auto`` runs factors.
Every row names the CPU it ran on and the score gradient (the learner's default, ``reference``). Writes
``benchmarks/results/factored_masks_w<width>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from meta_step import WAYS, tasks  # noqa: E402

from metaticket import MetaLearner, Tasks, build_model, make_layers  # noqa: E402
from metaticket.hardware import cpu_info  # noqa: E402
from metaticket.meta import factored  # noqa: E402


def step_ms(width: float, queries: int, meta_batch: int, reps: int, vectorize: str) -> float:
    import torch

    layers = make_layers(supermask=True, mask="threshold", sparsity=0.5, generator=torch.Generator().manual_seed(0))
    model = build_model("mlp", num_classes=WAYS, width=width, layers=layers)
    learner = MetaLearner(model, method="metaticket", inner_lr=0.4, outer_steps=1000, warmup_steps=0,
                          vectorize=vectorize)
    batch = Tasks(*tasks(meta_batch, queries=queries))
    for _ in range(2):
        learner.meta_step(batch)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        learner.meta_step(batch)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=8.0)
    p.add_argument("--queries", type=int, nargs="+", default=[1, 3, 5, 15])
    p.add_argument("--meta-batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--out", default="", help="default: benchmarks/results/factored_masks_w<width>.json")
    args = p.parse_args()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"factored_masks_w{args.width:g}.json")
    limit, rows = factored.MASKED_FACTOR_MAX, []
    for q in args.queries:
        factored.MASKED_FACTOR_MAX = limit
        per_task = step_ms(args.width, q, args.meta_batch, args.reps, "loop")
        factored.MASKED_FACTOR_MAX = 10 ** 9  # factors for every size
        forced = step_ms(args.width, q, args.meta_batch, args.reps, "factored")
        factored.MASKED_FACTOR_MAX = limit
        rows.append({"width": args.width, "queries": q, "meta_batch": args.meta_batch,
                     "pairs": WAYS * q * (WAYS - 1), "limit": limit,
                     "auto_uses_factors": factored.fits(True, WAYS, WAYS * q, 1, normed=True),
                     "per_task_ms": round(per_task, 1), "factored_ms": round(forced, 1),
                     "factored_speedup": round(per_task / forced, 2), "threads": torch.get_num_threads(),
                     "score_grad": "reference", "cpu": cpu_info()})
        print(json.dumps(rows[-1]), flush=True)
    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
