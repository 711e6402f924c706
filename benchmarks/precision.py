"""Benchmark: how far ``meta.precision: bfloat16`` moves the meta-gradient and the accuracy, against float32.

    python benchmarks/precision.py gradients [--widths 1 4 8] [--meta-batch 16] [--queries 15 1]
    python benchmarks/precision.py accuracy RUN_DIR [RUN_DIR ...] [--tasks 600]   # meta-tests each run's best

``gradients``: on real Omniglot 5-way 1-shot training tasks (``$METATICKET_DATA``), the meta-gradient of the same
freshly initialized learner on the same task batch in float32 and in bfloat16 (as built: the query pass, and on
the factored path the outer backward too; and, to show why not more, with the inner loop under autocast too),
for MAML and Meta-ticket, second and first order: cosine and relative error ``||g_bf16 - g_fp32|| / ||g_fp32||``.
For scale, the same two numbers between the float32 meta-gradients of two different task batches (the noise every
SGD step already has).
Rows name the ``path`` that ran (``--vectorize``; rows without one ran before the factored path existed).
``accuracy``: the meta-test lines (best checkpoint, the same test tasks) of runs that differ only in
``meta.precision`` (added to the rows of earlier runs; a run measured again replaces its row). Both write into
``benchmarks/results/precision.json`` (and ``.md``).
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


def meta_gradient(method: str, width: float, first_order: bool, precision: str, batch,
                  inner_too: bool = False, model: str = "mlp", vectorize: str = "auto") -> tuple:
    """The meta-gradient of a fresh learner on ``batch`` and the path that ran it (factored, vmap or loop);
    ``inner_too``: the inner loop under bfloat16 autocast as well (the variant not built, measured to show why; it
    patches the per-task inner loop, so it runs ``vectorize="loop"``)."""
    import torch

    import metaticket.meta.metaloss as learner_module

    plain = learner_module.adapt
    if inner_too:
        def adapt_bf16(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return plain(*args, **kwargs)

        learner_module.adapt = adapt_bf16
    try:
        return _meta_gradient(method, width, first_order, precision, batch, model,
                              "loop" if inner_too else vectorize)
    finally:
        learner_module.adapt = plain


def _meta_gradient(method: str, width: float, first_order: bool, precision: str, batch,
                   model: str, vectorize: str) -> tuple:
    import torch

    from metaticket import MetaLearner, build_model, make_layers

    layers = make_layers(supermask=method == "metaticket", mask="threshold", generator=torch.Generator().manual_seed(0))
    net = build_model(model, num_classes=5, width=width, layers=layers)
    learner = MetaLearner(net, method=method, inner_lr=0.4, first_order=first_order, precision=precision,
                          vectorize=vectorize)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.meta_gradient(batch, 1, first_order)
    # weights and scores only: a bias before BatchNorm has a zero gradient in exact arithmetic
    return torch.cat([p.grad.flatten() for n, p in learner.named_parameters()
                      if p.grad is not None and not n.endswith("bias")]), learner.path(batch, 1)


def compare(a, b) -> dict:
    import torch.nn.functional as F

    a, b = a.double(), b.double()  # a float32 cosine of millions of entries can come out above 1
    return {"cosine": round(float(F.cosine_similarity(a, b, dim=0)), 4),
            "relative_error": round(float((a - b).norm() / a.norm()), 4)}


def gradients(args: argparse.Namespace) -> list[dict]:
    from metaticket.config import load_config
    from metaticket.runs.commands import Context, samplers

    rows = []
    for queries in args.queries:
        config = load_config(ROOT / "configs" / "omniglot" / "quickstart.yaml", [f"data.queries={queries}"])
        train = samplers(config, Context.from_environment(os.environ))["train"]
        first, second = train.sample(args.meta_batch), train.sample(args.meta_batch)
        for width in args.widths:
            for method in ("maml", "metaticket"):
                for first_order in (False, True):
                    v = args.vectorize
                    fp32, path = meta_gradient(method, width, first_order, "float32", first, model=args.model,
                                               vectorize=v)
                    bf16, _ = meta_gradient(method, width, first_order, "bfloat16", first, model=args.model,
                                            vectorize=v)
                    inner, _ = meta_gradient(method, width, first_order, "bfloat16", first, True, args.model)
                    other, _ = meta_gradient(method, width, first_order, "float32", second, model=args.model,
                                             vectorize=v)
                    row = {"model": args.model, "path": path, "width": width, "method": method,
                           "order": "first" if first_order else "second",
                           "queries": queries, "meta_batch": args.meta_batch, "bf16_vs_fp32": compare(fp32, bf16),
                           "bf16_inner_too_vs_fp32": compare(fp32, inner), "other_batch_fp32": compare(fp32, other)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def accuracy(dirs: list[str], tasks: int) -> list[dict]:
    """Meta-test each run's best checkpoint on ``tasks`` test tasks (the same tasks for every run: eval.task_seed)."""
    from metaticket.runs import commands as runs
    from metaticket.runs.rundir import saved_config

    rows = []
    for d in dirs:
        folder = Path(d)
        config = saved_config(folder, "meta-train")
        test = runs.meta_test(folder, runs.Context.from_environment(os.environ), n_tasks=tasks)
        summary = json.loads((folder / "train_summary.json").read_text())
        rows.append({"run": folder.name, "precision": config.meta.precision, "method": config.meta.method,
                     "width": config.model.width, "meta_steps": config.meta.steps, "meta_batch": config.meta.meta_batch,
                     "queries": config.data.queries, "accuracy": test["accuracy"], "ci95": test["ci95"],
                     "tasks": test["tasks"], "checkpoint": test["checkpoint"], "sparsity": test["sparsity"],
                     "ms_per_step": round(summary["ms_per_step"], 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(out: dict) -> str:
    lines = ["| model, width | path | method | order | queries | bf16 as built vs fp32: cosine, rel. error | bf16 "
             "with the inner loop too (loop path): cosine, rel. error | another batch (fp32): cosine, rel. error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out.get("gradients", []):
        cells = [f"{c['cosine']:.3f}, {c['relative_error']:.3f}" for c in
                 (r["bf16_vs_fp32"], r["bf16_inner_too_vs_fp32"], r["other_batch_fp32"])]
        lines.append(f"| {r.get('model', 'mlp')} {r['width']:g} | {r.get('path', 'loop/vmap')} | {r['method']} | "
                     f"{r['order']} | {r['queries']} | "
                     f"{' | '.join(cells)} |")
    if out.get("accuracy"):
        lines += ["", "| run | method | width | precision | meta-steps x batch | test accuracy (%) | ms / meta-step |",
                  "|---|---|---|---|---|---|---|"]
        for r in out["accuracy"]:
            lines.append(f"| {r['run']} | {r['method']} | {r['width']:g} | {r['precision']} | {r['meta_steps']} x "
                         f"{r['meta_batch']} | {r['accuracy']:.2f} +- {r['ci95']:.2f} ({r['tasks']} tasks) | "
                         f"{r['ms_per_step']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gradients")
    g.add_argument("--widths", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    g.add_argument("--meta-batch", type=int, default=16)
    g.add_argument("--queries", type=int, nargs="+", default=[15, 1])
    g.add_argument("--model", default="mlp", choices=["mlp", "conv4"])
    g.add_argument("--vectorize", default="auto", choices=["auto", "factored", "vmap", "loop"],
                   help="meta.vectorize of the learners (rows record the path each batch ran)")
    a = sub.add_parser("accuracy")
    a.add_argument("runs", nargs="+")
    a.add_argument("--tasks", type=int, default=600)
    for q in (g, a):
        q.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    path = Path(args.results) / "precision.json"
    out = json.loads(path.read_text()) if path.is_file() else {}
    if args.what == "gradients":  # rows of other models, and of runs before the factored path, are kept
        out["gradients"] = [r for r in out.get("gradients", []) if r.get("model", "mlp") != args.model
                            or "path" not in r]
        out["gradients"] += gradients(args)
    else:
        new = accuracy(args.runs, args.tasks)  # rows of other runs are kept
        out["accuracy"] = [r for r in out.get("accuracy", []) if r["run"] not in {x["run"] for x in new}] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
