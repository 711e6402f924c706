"""Benchmark: which of the factored path's matrix products can run in bfloat16 without moving the meta-gradient.

    python benchmarks/precision_phases.py [--widths 1 8] [--meta-batch 4] [--name precision_phases]

On real Omniglot 5-way 1-shot training tasks with 1 query per class (``$METATICKET_DATA``, the quickstart's
sampler), the float32 meta-gradient of a fresh learner (MAML and Meta-ticket, second order, factored path) is
compared with the same learner's when the products with the shared weights of one phase and kind round their
operands to bfloat16 (float32 accumulation and results): the support steps' forward products (``h W^T``) or their
input-gradient products (``g W``), the query pass's, or the outer backward's (input gradients and the
second-order products; the weight's own gradient product is not among them), or, for Meta-ticket, the forward
product of the query pass's masked correction (``query:correction``). The last columns compare what
``precision: bfloat16`` rounds, all together, and, for scale, the float32 meta-gradients of two different task
batches. Cosine and relative error ``||g_low - g_fp32|| / ||g_fp32||``. This is how ``precision: bfloat16`` on
the factored path was chosen (benchmarks/README.md, "bfloat16 on the factored path", "The masked correction in
bfloat16"). It swaps the module's product functions for ones that round where asked, so it measures the code it
runs against; writes ``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS = ("support:forward", "support:input-gradient", "query:forward", "query:correction", "outer:forward",
            "outer:input-gradient")


def rounding_product(which: set[str], phase: list[str]):  # noqa: ANN201 (an autograd.Function class)
    """A stand-in for ``factored._Product`` that rounds the products of the (phase, kind) pairs in ``which``."""
    import torch
    import torch.nn.functional as F

    from metaticket.meta import factored

    def product(h: torch.Tensor, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
        kind = "input-gradient" if transposed else "forward"
        if f"{phase[0]}:{kind}" in which:
            x, w = h.to(torch.bfloat16), weight.to(torch.bfloat16)
            return (x @ w if transposed else F.linear(x, w)).to(h.dtype)
        return h @ weight if transposed else F.linear(h, weight)

    class Rounding(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, token, shared, transposed):  # noqa: ANN001, ANN205
            ctx.save_for_backward(h, token)
            ctx.shared, ctx.transposed = shared, transposed
            ctx.set_materialize_grads(False)
            return product(h, shared.weight, transposed)

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            h, token = ctx.saved_tensors
            if grad is None:
                return None, None, None, None
            ctx.shared.bank.add(h, grad) if ctx.transposed else ctx.shared.bank.add(grad, h)
            dh = None
            if ctx.needs_input_grad[0]:
                dh = Rounding.apply(grad, token, ctx.shared, not ctx.transposed) if torch.is_grad_enabled() \
                    else product(grad, ctx.shared.weight, not ctx.transposed)
            return dh, token.new_zeros(()), None, None

    assert factored._Product.forward.__code__.co_argcount == 5, "factored._Product changed: update this benchmark"
    return Rounding


def rounding_correction(phase: list[str]):  # noqa: ANN201 (an autograd.Function class)
    """A stand-in for ``factored._MaskProduct`` whose forward rounds in the query pass; its backward stays float32."""
    import torch

    from metaticket.meta import factored

    real = factored._MaskProduct

    class RoundingCorrection(real):
        @staticmethod
        def forward(ctx, rows, mask, rounded, low):  # noqa: ANN001, ANN205
            if phase[0] != "query":
                return real.forward(ctx, rows, mask, rounded, low)
            out = real.forward(ctx, rows, mask, rounded, factored._Low(torch.bfloat16, on=True))
            ctx.low = low  # the backward as float32 runs it
            return out

    assert real.forward.__code__.co_argcount == 5, "factored._MaskProduct changed: update this benchmark"
    return RoundingCorrection


def measure(widths: list[float], meta_batch: int) -> list[dict]:
    import precision

    from metaticket.config import load_config
    from metaticket.meta import factored
    from metaticket.runs.commands import Context, samplers

    config = load_config(ROOT / "configs" / "omniglot" / "quickstart.yaml", ["data.queries=1"])
    train = samplers(config, Context.from_environment(os.environ))["train"]
    first, second = train.sample(meta_batch), train.sample(meta_batch)
    phase = ["other"]
    real = {"_Product": factored._Product, "_MaskProduct": factored._MaskProduct,
            "adapt": factored.FactoredInner.adapt, "logits": factored.FactoredInner.logits}

    def adapt(inner, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        phase[0] = "support"
        try:
            return real["adapt"](inner, *args, **kwargs)
        finally:
            phase[0] = "other"

    def logits(inner, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        phase[0] = "query"
        try:
            return real["logits"](inner, *args, **kwargs)
        finally:
            phase[0] = "outer"  # what follows is the loss and the outer backward

    rows = []
    try:
        factored.FactoredInner.adapt, factored.FactoredInner.logits = adapt, logits
        for width in widths:
            for method in ("maml", "metaticket"):
                def grad(batch, which=frozenset(), method=method, width=width):  # noqa: ANN001, ANN202
                    factored._Product = rounding_product(set(which), phase) if which else real["_Product"]
                    if "query:correction" in which:
                        factored._MaskProduct = rounding_correction(phase)
                    try:
                        return precision.meta_gradient(method, width, False, "float32", batch,
                                                       vectorize="factored")[0]
                    finally:
                        factored._Product, factored._MaskProduct = real["_Product"], real["_MaskProduct"]

                base = grad(first)
                row = {"width": width, "method": method, "order": "second", "queries": 1, "meta_batch": meta_batch,
                       "other_batch_fp32": precision.compare(base, grad(second))}
                for variant in VARIANTS:
                    if variant == "query:correction" and method == "maml":
                        continue  # MAML has no masked correction
                    row[variant] = precision.compare(base, grad(first, {variant}))
                # what precision: bfloat16 rounds, all together
                row["as_built"] = precision.compare(base, precision.meta_gradient(
                    method, width, False, "bfloat16", first, vectorize="factored")[0])
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        factored.FactoredInner.adapt, factored.FactoredInner.logits = real["adapt"], real["logits"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=float, nargs="+", default=[1.0, 8.0])
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--name", default="precision_phases")
    args = p.parse_args()
    if not os.environ.get("METATICKET_DATA"):
        sys.exit("set METATICKET_DATA to the data folder (the Omniglot training tasks come from there)")
    rows = measure(args.widths, args.meta_batch)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    from metaticket.hardware import cpu_info

    machine = cpu_info()
    (out / f"{args.name}.json").write_text(json.dumps({"cpu": machine, "rows": rows}, indent=1) + "\n")
    head = "| MLP width | method | " + " | ".join(f"bf16 {v}" for v in VARIANTS) + \
        " | precision: bfloat16 (all it rounds) | another batch (fp32) |"
    lines = [head, "|---" * (4 + len(VARIANTS)) + "|"]
    for r in rows:
        cells = [f"{r[v]['cosine']:.3f}, {r[v]['relative_error']:.3f}" if v in r else "-"
                 for v in (*VARIANTS, "as_built", "other_batch_fp32")]
        lines.append(f"| {r['width']:g} | {r['method']} | " + " | ".join(cells) + " |")
    lines.append(f"\ncosine, relative error of the meta-gradient against float32 (second order, 1 query per class, "
                 f"meta-batch {args.meta_batch}, factored path); {machine['model']} ({', '.join(machine['flags'])})")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
