"""Benchmark: what the levers left for issue 32's item 5 can save on the paper cell, in one process, interleaved.

    python benchmarks/step_levers.py [--cell mlp-w8:second:4:1] [--steps 20] [--rounds 3] [--whole-step]
                                     [--name step_levers]

Meta-ticket's width-8 paper run needs about 26.5 ms per training step to fit 0.25 h (benchmarks/README.md); the
bfloat16 meta-step takes about 37. This script times, steps interleaved (one step of each variant in turn, so load
on a shared machine hits all alike), the meta-step as built against what each remaining lever could give:

- ``built``: Meta-ticket, ``precision: bfloat16``, reference gradient, 2 threads (the run's setting).
- ``maml``: MAML in bfloat16 on the same cell: the same step without any mask work.
- ``free-start``: a **ceiling, not a training step**: the fused start (``core/supermask.py: _MaskedStart``) hands
  back its first outputs again and its backward a zero gradient (one write), so the weight-sized passes that form
  the masks and the scores' gradient cost nothing but that write. No fusion of those passes can save more.
- ``compiled-start``: the same passes as ``torch.compile`` (inductor) kernels, one forward and one backward kernel
  per layer in place of four and three torch ops. Skipped with the compiler's error when it cannot build.
- ``half-batch-1-thread``: half the meta-batch on one thread: what each of two data-parallel processes (one per
  core, ``torchrun``, docs/distributed.md) would do per step before the all-reduce of the scores' gradient.

``--whole-step`` adds a separate measurement (not interleaved): width-8 MAML written per task with ``torch.func``
(``grad`` of a loss that takes an inner ``grad``), eager and under ``torch.compile``, which traces the double
backward into one forward graph (the factored path's autograd Functions cannot be compiled: "torch.compile with
aot_autograd does not currently support double backward"). Writes ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from meta_step import MODELS, ours  # noqa: E402
from paper_protocol import cpu  # noqa: E402
from score_grad_cost import alternate  # noqa: E402

VARIANTS = ("built", "maml", "free-start", "compiled-start", "half-batch-1-thread")


def _starts() -> dict[str, type]:
    """The fused start as built and the two stand-ins (``free-start``, ``compiled-start``), by variant."""
    import torch

    from metaticket.core import supermask

    real = supermask._MaskedStart

    class Free(torch.autograd.Function):
        """The start's outputs computed once per weight and handed back again; a zero scores' gradient."""

        generate_vmap_rule = True
        kept: dict = {}
        calls = 0

        @staticmethod
        def forward(scores, weight, threshold, k, low_weight):  # noqa: ANN001, ANN205
            Free.calls += 1
            key = (weight.data_ptr(), low_weight is not None)
            if key not in Free.kept:
                Free.kept[key] = real.forward(scores, weight, threshold, k, low_weight)
            return Free.kept[key]

        @staticmethod
        def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
            ctx.shape = inputs[0].shape
            ctx.set_materialize_grads(False)

        @staticmethod
        def backward(ctx, *grads):  # noqa: ANN001, ANN205
            return torch.zeros(ctx.shape), None, None, None, None

    def forward(scores, weight, threshold):  # noqa: ANN001, ANN202
        hard = (scores >= threshold).to(weight.dtype)
        masked = weight * hard
        return masked, hard, masked.to(torch.bfloat16), hard.to(torch.bfloat16)

    def backward(low_weight, low_hard, g_masked, g_mask):  # noqa: ANN001, ANN202
        return torch.addcmul(low_weight.float() * g_masked.float(), low_hard.float(), g_mask.float(), value=2)

    fused_forward, fused_backward = torch.compile(forward), torch.compile(backward)

    class Compiled(torch.autograd.Function):
        """``_MaskedStart``'s bfloat16 case (k = 2) with each direction one inductor kernel."""

        generate_vmap_rule = True
        calls = 0

        @staticmethod
        def forward(scores, weight, threshold, k, low_weight):  # noqa: ANN001, ANN205
            Compiled.calls += 1
            if low_weight is None or k != 2:
                return real.forward(scores, weight, threshold, k, low_weight)
            return fused_forward(scores.detach(), weight.detach(), threshold.detach())

        setup_context = real.setup_context

        @staticmethod
        def backward(ctx, g_masked, g_mask, g_masked_low=None, g_mask_low=None):  # noqa: ANN001, ANN205
            weight, hard, low_weight, low_hard = ctx.saved_tensors
            if g_masked is None and g_mask is None and g_masked_low is not None and g_mask_low is not None \
                    and not ctx.needs_input_grad[1]:
                return fused_backward(low_weight, low_hard, g_masked_low, g_mask_low), None, None, None, None
            return real.backward(ctx, g_masked, g_mask, g_masked_low, g_mask_low)

    return {"real": real, "free-start": Free, "compiled-start": Compiled}


def variants(model: str, first: bool, meta_batch: int, queries: int, names: list[str],
             threads: int) -> tuple[dict[str, Callable[[], object]], dict[str, str], dict[str, type]]:
    """One step function per variant (each on its own learner, same model shape and tasks), the variants that
    could not be built, with the reason, and the start classes (stand-ins count their calls)."""
    import torch

    from metaticket.core import supermask

    starts = _starts()
    steps: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}

    def with_start(start: type | None, step: Callable[[], object], n_threads: int) -> Callable[[], object]:
        """``step`` on ``n_threads`` threads, with ``start`` (a stand-in) in place of the fused start if given."""
        def call() -> object:
            if start is not None:
                supermask._MaskedStart = start
            torch.set_num_threads(n_threads)
            try:
                return step()
            finally:
                supermask._MaskedStart = starts["real"]
                torch.set_num_threads(threads)
        return call

    for name in names:
        impl = "ours-maml-bf16" if name == "maml" else "ours-metaticket-threshold-bf16"
        b = max(1, meta_batch // 2) if name == "half-batch-1-thread" else meta_batch
        step = ours(impl, model, first, b, queries)[0]
        call = with_start(starts.get(name), step, 1 if name == "half-batch-1-thread" else threads)
        if name == "compiled-start":
            try:
                call()  # compiles (a C++ compiler is needed on CPU)
            except Exception as e:  # noqa: BLE001 (any compiler failure skips the variant, with its message)
                skipped[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
        steps[name] = call
    return steps, skipped, starts


def whole_step(width: float, meta_batch: int, reps: int) -> dict:
    """Per-task width-``width`` MAML (second order) written with ``torch.func``: ms per meta-gradient eager and
    compiled, the compile time and the compiled gradient's largest relative difference from the eager one."""
    import torch
    import torch.nn.functional as F
    from torch.func import grad

    g = torch.Generator().manual_seed(0)
    sizes = [784] + [int(round(c * width)) for c in (256, 128, 64, 64)]
    weights = [torch.randn(o, i, generator=g) * (2 / i) ** 0.5 for i, o in zip(sizes[:-1], sizes[1:])]
    head = torch.randn(5, sizes[-1], generator=g) * 0.05

    def loss(ws, hd, x, y):  # noqa: ANN001, ANN202
        for w in ws:
            x = x @ w.t()
            x = F.relu((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-3))
        return F.cross_entropy(x @ hd.t(), y)

    def meta_loss(ws, hd, sx, sy, qx, qy):  # noqa: ANN001, ANN202
        total = 0.0
        for t in range(sx.shape[0]):
            gw, gh = grad(loss, argnums=(0, 1))(ws, hd, sx[t], sy[t])
            total = total + loss([w - 0.4 * d for w, d in zip(ws, gw)], hd - 0.4 * gh, qx[t], qy[t])
        return total / sx.shape[0]

    outer = grad(meta_loss, argnums=(0, 1))
    sx, qx = torch.randn(meta_batch, 5, 784, generator=g), torch.randn(meta_batch, 5, 784, generator=g)
    sy = torch.arange(5).repeat(meta_batch, 1)
    args = (weights, head, sx, sy, qx, sy.clone())

    def ms(f: Callable) -> float:
        return alternate({"step": lambda: f(*args)}, reps)["step"]

    eager = ms(outer)
    compiled = torch.compile(outer)
    t0 = time.perf_counter()
    compiled(*args)
    compile_s = time.perf_counter() - t0
    a, b = outer(*args)[0], compiled(*args)[0]
    diff = max(float((x - y).norm() / x.norm()) for x, y in zip(a, b))
    return {"width": width, "meta_batch": meta_batch, "eager_ms": round(eager, 1),
            "compiled_ms": round(ms(compiled), 1), "compile_s": round(compile_s, 1),
            "max_rel_diff": float(f"{diff:.2g}")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", default="mlp-w8:second:4:1", metavar="MODEL:ORDER:B:Q")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=20, help="steps of each variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--whole-step", action="store_true", help="also time the per-task torch.func MAML step")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default="step_levers")
    args = p.parse_args()
    parts = args.cell.split(":")
    if len(parts) != 4 or parts[0] not in MODELS or not parts[0].startswith("mlp") or \
            parts[1] not in ("first", "second") or not (parts[2].isdigit() and parts[3].isdigit()):
        sys.exit(f"--cell {args.cell!r}: write MODEL:ORDER:B:Q with MODEL an MLP of {', '.join(MODELS)}, ORDER "
                 "second or first, B and Q whole numbers (e.g. mlp-w8:second:4:1)")
    model, order, meta_batch, queries = parts[0], parts[1], int(parts[2]), int(parts[3])

    import torch

    from metaticket.hardware import keep_freed_memory

    keep_freed_memory()  # as run commands do (run.malloc: keep)
    torch.set_num_threads(args.threads)
    steps, skipped, starts = variants(model, order == "first", meta_batch, queries, args.variants, args.threads)
    ms = alternate(steps, args.rounds * args.steps)
    base = ms.get("built")
    rows = [{"variant": k, "ms": round(v, 2), "saved_ms": round(base - v, 2) if base else None,
             "meta_batch": max(1, meta_batch // 2) if k == "half-batch-1-thread" else meta_batch,
             "threads": 1 if k == "half-batch-1-thread" else args.threads,
             "stand_in_calls": starts[k].calls if k in starts else None} for k, v in ms.items()]
    out = {"cpu": cpu(), "cell": args.cell, "steps": args.rounds * args.steps, "rows": rows, "skipped": skipped}
    if args.whole_step:
        out["whole_step"] = whole_step(MODELS[model][1], meta_batch, max(5, args.steps))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| variant | meta-batch | threads | ms per meta-step | saved against built (ms) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['meta_batch']} | {r['threads']} | {r['ms']:.1f} | "
              f"{'' if r['saved_ms'] is None else format(r['saved_ms'], '.1f')} |" for r in rows]
    lines += [f"| {k} | | | skipped: {why} | |" for k, why in skipped.items()]
    machine = out["cpu"]
    lines.append(f"\n{args.cell}, Meta-ticket bfloat16 unless named; {machine['model']} "
                 f"({', '.join(machine['flags'])}); {args.rounds} rounds x {args.steps} steps per variant, interleaved")
    if "whole_step" in out:
        w = out["whole_step"]
        lines.append(f"\nPer-task torch.func MAML, width {w['width']:g}, meta-batch {w['meta_batch']}: eager "
                     f"{w['eager_ms']} ms, compiled {w['compiled_ms']} ms (compile {w['compile_s']} s, largest "
                     f"relative difference {w['max_rel_diff']})")
    (results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
