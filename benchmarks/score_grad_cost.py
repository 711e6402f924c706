"""Benchmark: what the reference score gradient costs against the ``start`` one, in one process, steps interleaved.

    python benchmarks/score_grad_cost.py [--cells mlp-w4:second:4:1 ...] [--steps 15] [--rounds 3]
                                         [--name score_grad_cost_interleaved]

For each (model, order, meta-batch, queries) cell one process builds two Meta-ticket learners on the same model
and tasks, one with ``score_grad="reference"`` and one with ``"start"`` (``benchmarks/meta_step.py``'s setup), and
times their meta-steps alternately (``--rounds`` rounds of ``--steps`` steps each, after 3 warm-up steps): load on
a shared machine then hits both alike, where separate processes minutes apart measured the same code 20-40%
apart. Reports each learner's median ms per meta-step and their ratio. Writes
``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from meta_step import cells, ours  # noqa: E402
from paper_protocol import cpu  # noqa: E402

CELLS = [f"mlp-w{w}:{o}:{b}:1" for w in (4, 8) for o in ("second", "first") for b in (4, 16)]


def alternate(steps: dict[str, Callable[[], object]], n: int) -> dict[str, float]:
    """Median ms per call of each step function, called in turn (one call each, ``n`` times) after 3 warm-up calls
    each: load on a shared machine then hits them alike."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(n):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def measure(model: str, order: str, meta_batch: int, queries: int, steps: int, rounds: int) -> dict:
    """Median ms per meta-step of the reference and the start formulation, steps interleaved, and the ratio."""
    import torch

    first = order == "first"
    runs = {"reference": ours("ours-metaticket-threshold", model, first, meta_batch, queries),
            "start": ours("ours-metaticket-threshold-start", model, first, meta_batch, queries)}
    ms = alternate({k: r[0] for k, r in runs.items()}, rounds * steps)
    path = runs["reference"][1].path(runs["reference"][2], 1)
    return {"model": model, "order": order, "meta_batch": meta_batch, "queries": queries, "path": path,
            "reference_ms": round(ms["reference"], 2), "start_ms": round(ms["start"], 2),
            "ratio": round(ms["reference"] / ms["start"], 3), "steps": rounds * steps,
            "threads": torch.get_num_threads()}


def parser(doc: str, cells_default: list[str], name: str) -> argparse.ArgumentParser:
    """The options of an interleaved comparison: cells, steps per round, rounds, where to write."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=cells_default, metavar="MODEL:ORDER:B:Q")
    p.add_argument("--steps", type=int, default=15, help="steps of each learner per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default=name)
    return p


def run(args: argparse.Namespace, measure: Callable[..., dict], header: str, line: Callable[[dict], str],
        what: str) -> None:
    """Measure every cell of ``args`` (allocator set as run commands set it), print the rows and write them as
    ``<name>.json`` and a table ``<name>.md`` (``header``, one ``line(row)`` per row, a note naming the CPU and
    ``what`` was compared)."""
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
    columns = header.count("|") - 1
    lines = [header, "|---" * columns + "|", *(line(r) for r in rows)]
    lines.append(f"\n{machine['model']} ({', '.join(machine['flags'])}), {rows[0]['threads'] if rows else '?'} "
                 f"threads, {what}, {args.rounds} rounds x {args.steps} steps per learner, interleaved")
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    args = parser(__doc__, CELLS, "score_grad_cost_interleaved").parse_args()
    run(args, measure, "| model | order | meta-batch | queries | path | reference ms | start ms | reference / start |",
        lambda r: f"| {r['model']} | {r['order']} | {r['meta_batch']} | {r['queries']} | {r['path']} | "
                  f"{r['reference_ms']:.1f} | {r['start_ms']:.1f} | {r['ratio']:.2f}x |", "Meta-ticket")


if __name__ == "__main__":
    main()
