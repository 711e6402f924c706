"""Benchmark: is batching tasks as ``bmm`` over stacked per-task weights faster than our per-task loop for wide MLPs?

    python benchmarks/ideas_mlp.py [--widths 4 8] [--meta-batch 16] [--queries 15] [--reps 5]

Plain functional Omniglot MLP (784 -> 256w -> 128w -> 64w -> 64w -> 5, task-statistics BatchNorm, ReLU), MAML
second order, one inner step (lr 0.4), same random tasks for both:
- ``loop``: one task's graph at a time from the shared start (what ``MetaLearner`` runs for wide MLPs);
- ``bmm``: all tasks in one graph; the start is expanded to [B, in, out] (a view), so autograd returns per-task
  inner gradients; the adapted weights are [B, in, out] and the query pass is one ``bmm`` per layer.
Reports the median ms of one meta-gradient and the relative difference of the two gradients (float32 rounding). Writes
``benchmarks/results/ideas_mlp.json``. Not built into the library: see benchmarks/README.md (issue 21).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def init(width: float, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [784, *(int(h * width) for h in (256, 128, 64, 64)), 5]
    return [(torch.randn(a, b, generator=g) * (2 / a) ** 0.5).requires_grad_() for a, b in zip(sizes, sizes[1:])]


def forward(ws: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x [..., N, 784] with weights [..., in, out]: matmul broadcasts (shared) or batches (stacked) over tasks."""
    for w in ws[:-1]:
        h = x @ w
        h = (h - h.mean(-2, keepdim=True)) * torch.rsqrt(h.var(-2, unbiased=False, keepdim=True) + 1e-5)
        x = F.relu(h)
    return x @ ws[-1]


def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def loop(ws, sx, sy, qx, qy, lr=0.4):
    for w in ws:
        w.grad = None
    leaves = [w.detach().requires_grad_() for w in ws]
    for i in range(len(sx)):
        g = torch.autograd.grad(loss_of(forward(leaves, sx[i]), sy[i]), leaves, create_graph=True)
        adapted = [torch.add(w, gi, alpha=-lr) for w, gi in zip(leaves, g)]
        (loss_of(forward(adapted, qx[i]), qy[i]) / len(sx)).backward()
    return [w.grad for w in leaves]


def bmm(ws, sx, sy, qx, qy, lr=0.4):
    b = len(sx)
    for w in ws:
        w.grad = None
    stacked = [w.expand(b, *w.shape) for w in ws]  # views: autograd's gradient w.r.t. them is per task
    inner = loss_of(forward(stacked, sx), sy) * b  # sum over tasks of each task's mean loss
    g = torch.autograd.grad(inner, stacked, create_graph=True)
    adapted = [torch.add(w, gi, alpha=-lr) for w, gi in zip(stacked, g)]
    loss_of(forward(adapted, qx), qy).backward()  # mean over tasks and queries = mean of task means
    return [w.grad for w in ws]


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--meta-batch", type=int, default=16)
    p.add_argument("--queries", type=int, nargs="+", default=[15, 1])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    g = torch.Generator().manual_seed(1)
    b = args.meta_batch
    rows = []
    for q, width in ((q, w) for q in args.queries for w in args.widths):
        sx, qx = torch.randn(b, 5, 784, generator=g), torch.randn(b, 5 * q, 784, generator=g)
        sy, qy = torch.arange(5).repeat(b, 1), torch.arange(5).repeat_interleave(q).repeat(b, 1)
        ws = init(width)
        a = [t.clone() for t in loop(ws, sx, sy, qx, qy)]
        c = bmm(ws, sx, sy, qx, qy)
        diff = torch.cat([(x - y).flatten() for x, y in zip(a, c)]).norm() / torch.cat([x.flatten() for x in a]).norm()
        batch = (ws, sx, sy, qx, qy)
        row = {"width": width, "meta_batch": b, "queries": q, "gradient_relative_difference": float(diff),
               "loop_ms": round(timed(lambda batch=batch: loop(*batch), args.reps), 1),
               "bmm_ms": round(timed(lambda batch=batch: bmm(*batch), args.reps), 1),
               "threads": torch.get_num_threads()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ideas_mlp.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
