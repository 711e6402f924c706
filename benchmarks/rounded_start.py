"""Benchmark: what forming Meta-ticket's scores' gradient in bfloat16 saves, in one process, steps interleaved.

    python benchmarks/rounded_start.py [--cells mlp-w8:second:4:1 ...] [--steps 15] [--rounds 3]
                                       [--name rounded_start]

Under ``precision: bfloat16`` on the factored path, ``masked_start(layer, k, low)`` hands the products the masked
weight and the mask already rounded, so their gradients come back in bfloat16 and the scores' gradient is formed
there and cast once. Before, the products cast both operands themselves, their gradients came back as float32
(two weight-sized casts per layer) and the scores' gradient took two float32 passes. For each (model, order,
meta-batch, queries) cell one process builds two Meta-ticket bfloat16 learners on the same model and tasks
(``benchmarks/meta_step.py``'s setup): ``rounded`` as built, and ``casts``, whose start ignores ``low`` (the
previous code path, exactly). It times their meta-steps alternately (``--rounds`` rounds of ``--steps`` steps each,
after 3 warm-up steps), so load on a shared machine hits both alike. Writes ``benchmarks/results/<name>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from meta_step import cells, ours  # noqa: E402
from paper_protocol import cpu  # noqa: E402

CELLS = [f"mlp-w{w}:second:{b}:1" for w in (4, 8) for b in (4, 16)]


def measure(model: str, order: str, meta_batch: int, queries: int, steps: int, rounds: int) -> dict:
    """Median ms per meta-step with and without the rounded start, steps interleaved, and their ratio."""
    import torch

    from metaticket.meta.metaloss import MetaLoss

    first = order == "first"
    runs = {"rounded": ours("ours-metaticket-threshold-bf16", model, first, meta_batch, queries),
            "casts": ours("ours-metaticket-threshold-bf16", model, first, meta_batch, queries)}
    casts = runs["casts"][1]
    casts._start = lambda first_order, low=None: MetaLoss._start(casts, first_order, None)
    for step, _, _ in runs.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds * steps):
        for name, (step, _, _) in runs.items():
            t0 = time.perf_counter()
            step()
            times[name].append(1000 * (time.perf_counter() - t0))
    ms = {k: statistics.median(v) for k, v in times.items()}
    learner, batch = runs["rounded"][1], runs["rounded"][2]
    # how many layers' rounded copies each start hands over (the check that the two learners differ)
    copies = {k: len(r[1]._start(first, torch.bfloat16)[2]) for k, r in runs.items()}
    return {"model": model, "order": order, "meta_batch": meta_batch, "queries": queries,
            "path": learner.path(batch, 1), "rounded_ms": round(ms["rounded"], 2), "casts_ms": round(ms["casts"], 2),
            "saved_ms": round(ms["casts"] - ms["rounded"], 2), "ratio": round(ms["casts"] / ms["rounded"], 3),
            "rounded_layers": copies["rounded"], "casts_rounded_layers": copies["casts"],
            "steps": len(times["rounded"]), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=CELLS, metavar="MODEL:ORDER:B:Q")
    p.add_argument("--steps", type=int, default=15, help="steps of each learner per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default="rounded_start")
    args = p.parse_args()
    from metaticket.hardware import keep_freed_memory

    keep_freed_memory()  # as run commands do (run.malloc: keep)
    rows = []
    for model, order, b, q in cells(args):
        rows.append(measure(model, order, b, q, args.steps, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    machine = cpu()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps({"cpu": machine, "rows": rows}, indent=1) + "\n")
    lines = ["| model | order | meta-batch | queries | path | casts (before) ms | rounded start ms | saved ms | "
             "before / now |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['order']} | {r['meta_batch']} | {r['queries']} | {r['path']} | "
              f"{r['casts_ms']:.1f} | {r['rounded_ms']:.1f} | {r['saved_ms']:.1f} | {r['ratio']:.2f}x |" for r in rows]
    lines.append(f"\n{machine['model']} ({', '.join(machine['flags'])}), {rows[0]['threads'] if rows else '?'} "
                 f"threads, Meta-ticket bfloat16, {args.rounds} rounds x {args.steps} steps per learner, interleaved")
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
