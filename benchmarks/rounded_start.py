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

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from meta_step import ours  # noqa: E402
from score_grad_cost import alternate, parser, run  # noqa: E402

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
    ms = alternate({k: r[0] for k, r in runs.items()}, rounds * steps)
    learner, batch = runs["rounded"][1], runs["rounded"][2]
    # how many layers' rounded copies each start hands over (the check that the two learners differ)
    copies = {k: len(r[1]._start(first, torch.bfloat16)[2]) for k, r in runs.items()}
    return {"model": model, "order": order, "meta_batch": meta_batch, "queries": queries,
            "path": learner.path(batch, 1), "rounded_ms": round(ms["rounded"], 2), "casts_ms": round(ms["casts"], 2),
            "saved_ms": round(ms["casts"] - ms["rounded"], 2), "ratio": round(ms["casts"] / ms["rounded"], 3),
            "rounded_layers": copies["rounded"], "casts_rounded_layers": copies["casts"],
            "steps": rounds * steps, "threads": torch.get_num_threads()}


def main() -> None:
    args = parser(__doc__, CELLS, "rounded_start").parse_args()
    run(args, measure, "| model | order | meta-batch | queries | path | casts (before) ms | rounded start ms | "
        "saved ms | before / now |",
        lambda r: f"| {r['model']} | {r['order']} | {r['meta_batch']} | {r['queries']} | {r['path']} | "
                  f"{r['casts_ms']:.1f} | {r['rounded_ms']:.1f} | {r['saved_ms']:.1f} | {r['ratio']:.2f}x |",
        "Meta-ticket bfloat16")


if __name__ == "__main__":
    main()
