"""Benchmark: the roofline of one meta-step, op by op: how fast could this sequence of ops run on this machine?

    python benchmarks/roofline.py --cells mlp-w8:second:16:15 ... [--impls ours-metaticket-threshold learn2learn]
                                  [--peak benchmarks/results/peak.json] [--name roofline]

For each (implementation, cell) a fresh process runs one meta-step (after two warm-up steps) under a
``TorchDispatchMode`` that sees every aten op, forward and backward, and counts for each op its FLOPs (torch's
FlopCounterMode formulas: matrix products and convolutions) and the bytes of the tensors it reads and writes.
An op cannot take less than ``max(FLOPs / compute peak, bytes / memory rate)``; their sum is the meta-step's
roofline time: what this op sequence would take if every op ran at the machine's limit. The peaks come from
``benchmarks/peak.py`` (``--peak``): the fp32 (bf16 for ops on bfloat16 tensors) matmul rate and the elementwise
memory rate of an 8 MB array (cache-resident, the optimistic roof) and of a 256 MB one (main memory).

Beside a learn2learn row of the same cell, ``roof_vs_half_learn2learn`` is our row's roofline time over half
learn2learn's measured time: above 1, this op sequence cannot be 2x learn2learn on this machine even with every
op at the limit (so 2x needs fewer bytes or FLOPs, not faster kernels). Ours run in the interpreter running this
script, the peers in ``--peers-python``, as in ``benchmarks/meta_step.py``, whose implementations and step
functions this reuses. Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from meta_step import OURS, PEERS, cells  # noqa: E402
from paper_protocol import cpu  # noqa: E402

NO_TRAFFIC = ("aten.detach", "aten.view", "aten.t", "aten.transpose", "aten.permute", "aten.expand", "aten.alias",
              "aten._unsafe_view", "aten.unsqueeze", "aten.squeeze", "aten.as_strided", "aten.slice", "aten.select",
              "aten.split", "aten.unbind", "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.lift_fresh",
              "aten.reshape", "aten.split_with_sizes", "aten.chunk")


def census(impl: str, model: str, order: str, meta_batch: int, queries: int) -> dict:
    """Per-op FLOPs and bytes of one meta-step of ``impl`` on the cell, grouped by op name, and the bfloat16
    share of the FLOPs."""
    import meta_step
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    first = order == "first"
    if impl in OURS:
        step = meta_step.ours(impl, model, first, meta_batch, queries)[0]
    else:
        step = meta_step.peer(impl, model, first, meta_batch, queries)
    for _ in range(2):
        step()
    ops: dict[str, dict] = {}

    def nbytes(x: object) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, (list, tuple)):
            return sum(nbytes(y) for y in x)
        return 0

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = str(func.overloadpacket)
            if name in NO_TRAFFIC:
                return out
            flops = 0
            if func.overloadpacket in flop_registry:
                flops = int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
            low = any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args)
            row = ops.setdefault(name, {"calls": 0, "flops": 0, "bf16_flops": 0, "bytes": 0, "op_rows": []})
            moved = nbytes(list(args)) + nbytes(list(kwargs.values())) + nbytes(out)
            row["calls"] += 1
            row["flops"] += flops
            row["bf16_flops"] += flops if low else 0
            row["bytes"] += moved
            row["op_rows"].append((flops, moved, low))
            return out

    with Census():
        step()
    return ops


def roof_ms(ops: dict, peak: dict, rate_gbs: float) -> float:
    """Sum over ops of max(FLOPs / compute peak, bytes / memory rate), in ms."""
    total = 0.0
    for row in ops.values():
        for flops, moved, low in row["op_rows"]:
            compute = flops / (peak["bf16" if low else "fp32"] * 1e9)
            total += max(compute, moved / (rate_gbs * 1e9))
    return 1000 * total


def peaks_from(path: Path) -> dict:
    """fp32 / bf16 matmul GFLOP/s and the 8 MB / 256 MB elementwise GB/s at the largest thread count measured."""
    rows = json.loads(path.read_text())["rows"]
    threads = max(r["threads"] for r in rows)
    at = {r["op"] + ":" + r["dtype"]: r for r in rows if r["threads"] == threads}
    return {"threads": threads, "fp32": at["matmul:float32"]["gflops"], "bf16": at["matmul:bfloat16"]["gflops"],
            "cache_gbs": at["triad 8 MB:float32"]["gbytes_per_s"],
            "memory_gbs": at["triad 256 MB:float32"]["gbytes_per_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--cells", nargs="+", metavar="MODEL:ORDER:B:Q", default=["mlp-w8:second:16:15"],
                   help="the (model, order, meta-batch, queries) cells, as in meta_step.py --cells")
    p.add_argument("--impls", nargs="+", default=["ours-metaticket-threshold", "learn2learn"],
                   choices=[*OURS, *PEERS])
    p.add_argument("--times", default=str(RESULTS / "meta_step.json"),
                   help="a meta_step.py result whose measured ms per step the roofline is set against")
    p.add_argument("--peak", default=str(RESULTS / "peak.json"), help="benchmarks/peak.py's result")
    p.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default="roofline")
    p.add_argument("--rewrite", action="store_true", help="rewrite <name>.md (and the ratios) from <name>.json")
    args = p.parse_args()
    if args.rewrite:
        saved = json.loads((Path(args.results) / f"{args.name}.json").read_text())
        write(saved["rows"], saved["peak"], saved["cpu"], Path(args.results), args.name)
        return
    if args.one:
        impl, model, order, b, q = args.one
        ops = census(impl, model, order, int(b), int(q))
        print(json.dumps(ops))
        return
    if not Path(args.peak).is_file():
        sys.exit(f"no peak result at {args.peak}: run python benchmarks/peak.py first (or pass --peak)")
    peak = peaks_from(Path(args.peak))
    measured = {}
    if Path(args.times).is_file():
        for r in json.loads(Path(args.times).read_text())["rows"]:
            if "error" not in r:
                measured[(r["impl"], r["model"], r["order"], r["meta_batch"], r.get("queries", 15))] = r["median_ms"]
    rows = []
    for model, order, b, q in cells(args):
        for impl in args.impls:
            python = args.peers_python if impl in PEERS else sys.executable
            proc = subprocess.run([python, str(Path(__file__).resolve()), "--one", impl, model, order, str(b), str(q)],
                                  cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode != 0:
                sys.exit(f"{impl} {model}: {proc.stderr.strip().splitlines()[-1]}")
            ops = json.loads(proc.stdout.strip().splitlines()[-1])
            flops = sum(o["flops"] for o in ops.values())
            moved = sum(o["bytes"] for o in ops.values())
            mm_bytes = sum(o["bytes"] for o in ops.values() if o["flops"])
            row = {"impl": impl, "model": model, "order": order, "meta_batch": b, "queries": q,
                   "gflop": round(flops / 1e9, 3), "bf16_share": round(sum(o["bf16_flops"] for o in ops.values())
                                                                       / max(flops, 1), 3),
                   "gbytes": round(moved / 1e9, 3), "gbytes_outside_products": round((moved - mm_bytes) / 1e9, 3),
                   "roof_ms_cache": round(roof_ms(ops, peak, peak["cache_gbs"]), 1),
                   "roof_ms_memory": round(roof_ms(ops, peak, peak["memory_gbs"]), 1),
                   "measured_ms": measured.get((impl, model, order, b, q)),
                   "top_ops_by_bytes": sorted(((n, o["calls"], round(o["bytes"] / 1e9, 3)) for n, o in ops.items()),
                                              key=lambda t: -t[2])[:6]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    write(rows, peak, cpu(), Path(args.results), args.name)


def against_learn2learn(rows: list[dict]) -> None:
    """In place: each of our rows' roofline times (cache and memory rate) over half the measured time of the
    learn2learn row of its cell; above 1, that op sequence cannot run 2x learn2learn at that rate."""
    for r in rows:
        ref = next((x for x in rows if x["impl"] == "learn2learn" and (x["model"], x["order"], x["meta_batch"],
                   x["queries"]) == (r["model"], r["order"], r["meta_batch"], r["queries"])), None)
        if ref and ref.get("measured_ms") and r["impl"] != "learn2learn":
            r["roof_vs_half_learn2learn"] = round(r["roof_ms_cache"] / (ref["measured_ms"] / 2), 2)
            r["roof_vs_half_learn2learn_memory"] = round(r["roof_ms_memory"] / (ref["measured_ms"] / 2), 2)


def write(rows: list[dict], peak: dict, machine: dict, results: Path, name: str) -> None:
    """``<name>.json`` and the table ``<name>.md``."""
    against_learn2learn(rows)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps({"cpu": machine, "peak": peak, "rows": rows}, indent=1))
    lines = ["| model | order | B | queries | implementation | GFLOP (bf16 share) | GB moved (outside products) | "
             "roofline ms, cache / memory rate | measured ms | roofline / half learn2learn, cache / memory rate |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['roof_vs_half_learn2learn']} / {r['roof_vs_half_learn2learn_memory']}" \
            if "roof_vs_half_learn2learn" in r else ""
        measured = f"{r['measured_ms']:.0f}" if r.get("measured_ms") else ""
        lines.append(f"| {r['model']} | {r['order']} | {r['meta_batch']} | {r['queries']} | {r['impl']} | "
                     f"{r['gflop']} ({100 * r['bf16_share']:.0f}%) | {r['gbytes']} ({r['gbytes_outside_products']}) | "
                     f"{r['roof_ms_cache']} / {r['roof_ms_memory']} | {measured} | {ratio} |")
    lines.append(f"\nPeaks ({peak['threads']} threads, {machine['model']}, {', '.join(machine['flags'])}): matmul "
                 f"fp32 {peak['fp32']} / bf16 {peak['bf16']} GFLOP/s; elementwise {peak['cache_gbs']} GB/s (8 MB) / "
                 f"{peak['memory_gbs']} GB/s (256 MB)")
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
