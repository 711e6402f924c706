"""Benchmark: this machine's compute ceilings, the numbers a meta-step's GFLOP/s is compared with.

    python benchmarks/peak.py [--threads 1 2] [--reps 10] [--name peak]

Measures the rate (GFLOP/s, median of ``--reps`` after warm-up) of a large fp32 and bfloat16 matrix product
(2048 x 2048 x 2048, or smaller where one product would take over half a second) and of a Conv4-shaped 3 x 3
convolution (64 -> 64 channels, 28 x 28, batch 256, forward, in channels-last order) in fp32 and bfloat16, and the
memory rate of an elementwise pass (``a = b + 0.5 * c`` over float32 arrays of 8 MB, one MLP width-8 weight, and
of 256 MB, beyond any cache: GB/s counting 3 arrays of traffic) at each thread count, and records the CPU's
model name and the vector extensions that decide bfloat16 speed (AVX-512 BF16,
AMX). Writes ``benchmarks/results/<name>.json``. Measure with
nothing else running: a second job on the other core halves what one thread reaches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from paper_protocol import cpu  # noqa: E402


def rate(fn, flops: float, reps: int) -> float:
    """GFLOP/s of ``fn`` (which does ``flops`` floating-point operations), median over ``reps`` calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times) / 1e9


def matmul(dtype: torch.dtype, n: int, reps: int, budget_s: float = 0.5) -> float:
    """GFLOP/s of an n x n x n product, or of the largest power-of-two side below n whose product takes at most
    ``budget_s``: without native bfloat16 (AVX2) a 2048 product in bfloat16 took 30 s, at the same rate as 512."""
    side = 256
    while side < n:
        a, b = torch.randn(2 * side, 2 * side, dtype=dtype), torch.randn(2 * side, 2 * side, dtype=dtype)
        t0 = time.perf_counter()
        a @ b
        if time.perf_counter() - t0 > budget_s:
            break
        side *= 2
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    return rate(lambda: a @ b, 2 * side ** 3, reps)


def conv(dtype: torch.dtype, reps: int, batch: int = 256, channels: int = 64, side: int = 28) -> float:
    x = torch.randn(batch, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * batch * channels * channels * 9 * side * side
    return rate(lambda: F.conv2d(x, w, padding=1), flops, reps)


def triad(megabytes: int, reps: int) -> float:
    """GB/s of ``a = b + 0.5 * c`` over float32 arrays of ``megabytes`` each (reads b and c, writes a)."""
    n = megabytes * 2 ** 20 // 4
    a, b, c = torch.empty(n), torch.randn(n), torch.randn(n)
    return rate(lambda: torch.add(b, c, alpha=0.5, out=a), 3 * 4 * n, reps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--n", type=int, default=2048, help="side of the square matrices")
    p.add_argument("--name", default="peak")
    p.add_argument("--results", default=str(RESULTS), help="folder for <name>.json")
    args = p.parse_args(argv)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            kind = str(dtype).removeprefix("torch.")
            rows.append({"op": "matmul", "dtype": kind, "threads": threads,
                         "gflops": round(matmul(dtype, args.n, args.reps), 1)})
            rows.append({"op": "conv3x3", "dtype": kind, "threads": threads,
                         "gflops": round(conv(dtype, args.reps), 1)})
            print(json.dumps(rows[-2]), json.dumps(rows[-1]), flush=True)
        for mb in (8, 256):
            rows.append({"op": f"triad {mb} MB", "dtype": "float32", "threads": threads,
                         "gbytes_per_s": round(triad(mb, args.reps), 1)})
            print(json.dumps(rows[-1]), flush=True)
    out = {"cpu": cpu(), "torch": torch.__version__, "rows": rows}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
