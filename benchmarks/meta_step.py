"""Benchmark: one meta-step of our MAML and Meta-ticket against learn2learn's MAML and higher, side by side.

    python benchmarks/meta_step.py [--peers-python .venv-peers/bin/python] [--models mlp mlp-w4 mlp-w8 conv4]
                                   [--orders second first] [--meta-batch 32] [--queries 15] [--reps 7]
                                   [--rounds 2] [--name meta_step]

Same model shapes, same task tensors, same settings for every implementation: 5-way 1-shot, 15 queries per
class, meta-batch 32 (``--meta-batch`` and ``--queries`` take several values: every combination is measured), one
inner SGD step (lr 0.4), Adam outer step (Meta-ticket: SGD on the scores). ``-bf16`` rows are ours with
``precision="bfloat16"`` (the query pass's matrix products in bfloat16); ``-nchw`` rows are ours with conv
models kept channels-first (what ran before channels-last); ``-copies`` rows are ours with every task's adapted
weights materialized (``vmap`` or the per-task loop, what MLPs ran before the factored inner loop); Meta-ticket rows
use the reference score gradient (``meta.score_grad: reference``), ``-start`` rows the formulation of config format 2.
``conv4-84`` takes 3 x 84 x 84 images. Each
(implementation, model, order) runs in a fresh process, so peak memory is its own: ours in this interpreter,
learn2learn and higher in ``--peers-python`` (a venv made with ``../shared/peers/install-learn2learn.sh``; they
are never dependencies of metaticket). Reports the median of ``--reps`` meta-steps after 2 warm-up steps (with
``--rounds R``, every measurement is repeated R times, interleaved, and the median of the R medians is kept), the
process's peak RSS and its RSS before the first step, the FLOPs of one meta-step (torch's FlopCounterMode on our
MAML; on ``ours-maml-copies`` when it runs, the per-task formulation learn2learn computes) and the GFLOP/s that
makes against this machine's measured fp32 matmul rate. ``--malloc keep`` (default) sets every row's process, ours
and the peers', as run commands set theirs (``run.malloc``). Beside a learn2learn row, the fraction of that rate our
row's FLOPs would need to be 2x learn2learn (the roofline of the 2x target: above 100% it cannot be had).

Writes ``benchmarks/results/<name>.json``, ``.md`` (the table) and ``.png`` (bar chart).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from paper_protocol import cpu  # noqa: E402

MODELS = {"mlp": ("mlp", 1.0), "mlp-w2": ("mlp", 2.0), "mlp-w4": ("mlp", 4.0), "mlp-w8": ("mlp", 8.0),
          "conv4": ("conv4", 1.0), "conv4-84": ("conv4", 1.0)}
IMAGES = {"conv4-84": (3, 84)}  # (channels, side) of a model's inputs; the rest take Omniglot's (1, 28)


def model_kwargs(model_key: str) -> dict:
    """Input shape arguments of a model that does not take Omniglot's 1 x 28 x 28 images."""
    if model_key not in IMAGES:
        return {}
    channels, side = IMAGES[model_key]
    return {"in_channels": channels, "image_size": side}
OURS = ("ours-maml", "ours-metaticket-threshold", "ours-metaticket-topk", "ours-maml-bf16",
        "ours-metaticket-threshold-bf16", "ours-maml-nchw", "ours-metaticket-threshold-nchw", "ours-maml-copies",
        "ours-metaticket-threshold-copies", "ours-metaticket-threshold-start", "ours-metaticket-threshold-start-copies")
PEERS = ("learn2learn", "higher")
WAYS, SHOTS, QUERIES, INNER_LR = 5, 1, 15, 0.4


def tasks(meta_batch: int, seed: int = 0, queries: int = QUERIES, image: tuple[int, int] = (1, 28)):
    """Task tensors: support [B, 5, C, S, S], query [B, 5 * queries, C, S, S] with (C, S) = ``image`` (timing does
    not depend on pixels)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c, side = image
    sx = torch.randn(meta_batch, WAYS * SHOTS, c, side, side, generator=g)
    qx = torch.randn(meta_batch, WAYS * queries, c, side, side, generator=g)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(meta_batch, 1)
    qy = torch.arange(WAYS).repeat_interleave(queries).repeat(meta_batch, 1)
    return sx, sy, qx, qy


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------- one measurement
def ours(impl: str, model_key: str, first_order: bool, meta_batch: int, queries: int = QUERIES,
         vectorize: str | None = None):
    """A step function for our learner, the learner and its batch; ``vectorize`` overrides the path."""
    import torch

    from metaticket import MetaLearner, Tasks, build_model, make_layers
    from metaticket.core.supermask import dense_like
    from metaticket.meta.metaloss import vmap_wins

    name, width = MODELS[model_key]
    precision = "bfloat16" if impl.endswith("-bf16") else "float32"
    nchw = impl.endswith("-nchw")  # conv models: the channels-first order we ran before channels-last
    copies = impl.endswith("-copies")  # MLPs: each task's weights materialized (vmap or loop), as before factors
    impl = impl.removesuffix("-bf16").removesuffix("-nchw").removesuffix("-copies")
    start = impl.endswith("-start")  # Meta-ticket's score gradient of config format 2 (meta.score_grad start)
    impl = impl.removesuffix("-start")
    method = "maml" if impl == "ours-maml" else "metaticket"
    mask = impl.rsplit("-", 1)[-1] if method == "metaticket" else "threshold"
    layers = make_layers(supermask=method == "metaticket", mask=mask, sparsity=0.5,
                         generator=torch.Generator().manual_seed(0))
    model = build_model(name, num_classes=WAYS, width=width, layers=layers, **model_kwargs(model_key))
    if vectorize is None:
        vectorize = ("vmap" if vmap_wins(dense_like(model)) else "loop") if copies else "auto"
    learner = MetaLearner(model, method=method, inner_lr=INNER_LR, first_order=first_order, outer_steps=1000,
                          warmup_steps=0, precision=precision, vectorize=vectorize,
                          score_grad="start" if start else "reference")
    if nchw:
        learner.channels_last = False
    batch = Tasks(*tasks(meta_batch, queries=queries, image=IMAGES.get(model_key, (1, 28))))
    return (lambda: learner.meta_step(batch)), learner, batch


def peer(impl: str, model_key: str, first_order: bool, meta_batch: int, queries: int = QUERIES):
    """A step function for learn2learn's MAML or higher's innerloop_ctx over plain torch modules."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from metaticket.models import build_model
    from metaticket.models.registry import Layers

    name, width = MODELS[model_key]
    torch.manual_seed(0)
    # what a user of these libraries writes: torch's own BatchNorm with batch statistics
    layers = Layers(norm1d=lambda n: nn.BatchNorm1d(n, track_running_stats=False),
                    norm2d=lambda n: nn.BatchNorm2d(n, track_running_stats=False))
    model = build_model(name, num_classes=WAYS, width=width, layers=layers, **model_kwargs(model_key))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sx, sy, qx, qy = tasks(meta_batch, queries=queries, image=IMAGES.get(model_key, (1, 28)))

    if impl == "learn2learn":
        import learn2learn as l2l

        maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=first_order)

        def step():
            opt.zero_grad(set_to_none=True)
            for i in range(meta_batch):
                learner = maml.clone()
                learner.adapt(F.cross_entropy(learner(sx[i]), sy[i]))
                (F.cross_entropy(learner(qx[i]), qy[i]) / meta_batch).backward()
            opt.step()
    else:
        import higher

        inner = torch.optim.SGD(model.parameters(), lr=INNER_LR)

        def step():
            opt.zero_grad(set_to_none=True)
            for i in range(meta_batch):
                with higher.innerloop_ctx(model, inner, copy_initial_weights=False,
                                          track_higher_grads=not first_order) as (fmodel, diffopt):
                    diffopt.step(F.cross_entropy(fmodel(sx[i]), sy[i]))
                    (F.cross_entropy(fmodel(qx[i]), qy[i]) / meta_batch).backward()
            opt.step()
    return step


def count_flops(step) -> int | None:
    """FLOPs of one call of ``step`` (matrix products and convolutions, torch's FlopCounterMode); None if the
    counter cannot run it."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            step()
    except Exception:  # noqa: BLE001 (a peer's step the counter cannot trace: no FLOPs column)
        return None
    return int(counter.get_total_flops())


def dense_flops(impl: str, model_key: str, first_order: bool, meta_batch: int, queries: int) -> int | None:
    """FLOPs of the per-task formulation of ``impl``'s meta-step (every task's adapted weights materialized and
    run through the model, as learn2learn does): the same learner run with ``vectorize="loop"``."""
    base = impl.removesuffix("-bf16").removesuffix("-nchw").removesuffix("-copies")
    step, _, _ = ours(base + "-copies", model_key, first_order, meta_batch, queries, vectorize="loop")
    return count_flops(step)


def measure(impl: str, model_key: str, order: str, meta_batch: int, reps: int, queries: int = QUERIES) -> dict:
    import torch

    first_order = order == "first"
    learner = batch = None
    if impl in OURS:
        step, learner, batch = ours(impl, model_key, first_order, meta_batch, queries)
    else:
        step = peer(impl, model_key, first_order, meta_batch, queries)
    before = rss_mb()
    for _ in range(2):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - t0))
    out = {"impl": impl, "model": model_key, "order": order, "meta_batch": meta_batch, "queries": queries,
           "median_ms":
           statistics.median(times), "times_ms": times, "peak_rss_mb": rss_mb(), "rss_before_mb": before,
           "threads": torch.get_num_threads(), "torch": str(torch.__version__)}
    # what this path computes, and what the per-task formulation of the same meta-step computes
    out["flops"] = count_flops(step)
    if learner is not None:
        out["vectorize"] = learner.vectorize
        out["dense_flops"] = dense_flops(impl, model_key, first_order, meta_batch, queries)
    else:  # learn2learn and higher run the per-task formulation
        out["dense_flops"] = out["flops"]
    return out


def peaks(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """This machine's fp32 and bfloat16 matmul rates (GFLOP/s, n x n x n, median of ``reps``) at the current
    thread count: the practical compute ceilings (benchmarks/peak.py)."""
    import torch
    from peak import matmul

    return {"fp32": round(matmul(torch.float32, n, reps), 1), "bf16": round(matmul(torch.bfloat16, n, reps), 1)}


def rates(row: dict, peak: dict[str, float]) -> dict:
    """A row's achieved GFLOP/s on its own path's FLOPs and on the per-task formulation's (dense-equivalent), and
    the first as a fraction of the fp32 and bf16 peaks."""
    out = {}
    seconds = row["median_ms"] / 1000
    if row.get("flops"):
        g = row["flops"] / seconds / 1e9
        out |= {"gflops": round(g, 2), "fraction_fp32_peak": round(g / peak["fp32"], 4),
                "fraction_bf16_peak": round(g / peak["bf16"], 4)}
    if row.get("dense_flops"):
        out["dense_equivalent_gflops"] = round(row["dense_flops"] / seconds / 1e9, 2)
    return out


def roofline(rows: list[dict], peak: dict[str, float]) -> None:
    """The roofline of the 2x target, in place: on each of our rows beside a learn2learn row of the same shape,
    ``peak_fraction_for_2x`` is the fraction of this machine's matmul peak (bf16 for ``-bf16`` rows, else fp32)
    at which the row's own FLOPs would run in half learn2learn's time. Above 1, 2x cannot be had at these FLOPs
    on this machine, whatever the kernels; near the row's achieved fraction, only faster kernels would get it."""
    for r in rows:
        ref = next((x for x in rows if _shape(x) == _shape(r) and x["impl"] == "learn2learn" and "error" not in x),
                   None)
        if ref is None or r["impl"] in PEERS or not r.get("flops") or "error" in r:
            continue
        rate = r["flops"] / (ref["median_ms"] / 2 / 1000) / 1e9
        r["peak_fraction_for_2x"] = round(rate / peak["bf16" if r["impl"].endswith("-bf16") else "fp32"], 4)


# ----------------------------------------------------------------------------------------------- driver
def run_one(python: str, impl: str, model: str, order: str, meta_batch: int, reps: int,
            queries: int = QUERIES, malloc: str = "keep") -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--one", impl, model, order, "--meta-batch", str(meta_batch),
           "--queries", str(queries), "--reps", str(reps), "--malloc", malloc]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        return {"impl": impl, "model": model, "order": order, "meta_batch": meta_batch, "queries": queries,
                "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine(rounds: list[dict]) -> dict:
    """One row per implementation: the median over rounds of each round's median (and every round's median)."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[0]
    row = dict(ok[0])
    row["round_medians_ms"] = [r["median_ms"] for r in ok]
    row["median_ms"] = statistics.median(row["round_medians_ms"])
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    return row


def _shape(r: dict) -> tuple:
    """What one comparison holds fixed: model, order, meta-batch, queries (rows of older files lack the last)."""
    return r["model"], r["order"], r.get("meta_batch"), r.get("queries", QUERIES)


def table(rows: list[dict], native_bf16: bool = True) -> str:
    lines = ["| model | order | meta-batch | queries | implementation | ms / meta-step (median) | peak RSS MB (before "
             "first step) | vs learn2learn | vs ours float32 | GFLOP/s of its own FLOPs (% of fp32 / bf16 peak) | "
             "dense-equivalent GFLOP/s | 2x learn2learn needs (% of peak) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['order']} | {r.get('meta_batch', '')} | {r.get('queries', QUERIES)} | {r['impl']}"
        if "error" in r:
            lines.append(f"{head} | failed: {r['error'][:80]} | | | | | | |")
            continue
        same = [x for x in rows if _shape(x) == _shape(r) and "error" not in x]
        ref = next((x for x in same if x["impl"] == "learn2learn"), None)
        ratio = f"{ref['median_ms'] / r['median_ms']:.2f}x faster" if ref else ""
        base = next((x for x in same if x["impl"] == r["impl"].removesuffix("-bf16")), None)
        gain = f"{base['median_ms'] / r['median_ms']:.2f}x" if base and r["impl"].endswith("-bf16") else ""
        plain = next((x for x in same if x["impl"] == r["impl"] + "-nchw"), None)
        gain = f"{plain['median_ms'] / r['median_ms']:.2f}x vs NCHW" if plain else gain
        copies = next((x for x in same if x["impl"] == r["impl"] + "-copies"), None)
        gain = f"{copies['median_ms'] / r['median_ms']:.2f}x vs copies" if copies else gain
        start = next((x for x in same if x["impl"] == r["impl"].replace("-copies", "") + "-start" +
                      ("-copies" if r["impl"].endswith("-copies") else "")), None)
        gain = f"{gain + ', ' if gain else ''}{r['median_ms'] / start['median_ms']:.2f}x the cost of start" \
            if start else gain
        # a bf16 fraction only where the CPU has native bf16 (AVX512-BF16 or AMX): emulated, it is 100x above 100%
        bf16 = f" / {100 * r['fraction_bf16_peak']:.0f}%" if native_bf16 and "gflops" in r else " / -"
        rate = f"{r['gflops']:.1f} ({100 * r['fraction_fp32_peak']:.0f}%{bf16})" if "gflops" in r else ""
        dense = f"{r['dense_equivalent_gflops']:.1f}" if "dense_equivalent_gflops" in r else ""
        need = f"{100 * r['peak_fraction_for_2x']:.0f}%" if "peak_fraction_for_2x" in r else ""
        lines.append(f"{head} | {r['median_ms']:.0f} | {r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) | {ratio} | "
                     f"{gain} | {rate} | {dense} | {need} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({_shape(r) for r in rows}, key=lambda g: (list(MODELS).index(g[0]), g[1], g[2] or 0, g[3]))
    impls = [i for i in (*OURS, *PEERS) if any(r["impl"] == i for r in rows)]
    fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 3, 4.5))
    width = 0.8 / max(len(impls), 1)
    for j, impl in enumerate(impls):
        ys = [next((r["median_ms"] for r in rows if _shape(r) == g and r["impl"] == impl and "error" not in r), 0)
              for g in groups]
        ax.bar([i + j * width for i in range(len(groups))], ys, width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{m}\n{o} order\nB={b} q={q}" for m, o, b, q in groups], fontsize=7)
    ax.set_ylabel("ms per meta-step (median)")
    ax.set_yscale("log")
    ax.set_title("One meta-step, 5-way 1-shot, 1 inner step (2 CPU cores)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cells(args: argparse.Namespace) -> list[tuple[str, str, int, int]]:
    """The (model, order, meta-batch, queries) cells to measure: ``--cells``, else every combination."""
    if not args.cells:
        return list(itertools.product(args.models, args.orders, args.meta_batch, args.queries))
    out = []
    for cell in args.cells:
        parts = cell.split(":")
        if len(parts) != 4 or parts[0] not in MODELS or parts[1] not in ("second", "first") or \
                not (parts[2].isdigit() and parts[3].isdigit()):
            sys.exit(f"--cells {cell!r}: write MODEL:ORDER:B:Q with MODEL one of {', '.join(MODELS)}, ORDER second "
                     f"or first, B and Q whole numbers (e.g. mlp-w8:second:16:15)")
        out.append((parts[0], parts[1], int(parts[2]), int(parts[3])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", nargs=3, metavar=("IMPL", "MODEL", "ORDER"), help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=["mlp", "mlp-w4", "conv4"], choices=list(MODELS))
    p.add_argument("--orders", nargs="+", default=["second", "first"], choices=["second", "first"])
    p.add_argument("--impls", nargs="+", default=[*OURS, *PEERS], choices=[*OURS, *PEERS])
    p.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    p.add_argument("--meta-batch", type=int, nargs="+", default=[32])
    p.add_argument("--queries", type=int, nargs="+", default=[QUERIES], help="query images per class")
    p.add_argument("--cells", nargs="+", default=None, metavar="MODEL:ORDER:B:Q",
                   help="measure exactly these (model, order, meta-batch, queries) cells, e.g. mlp-w8:second:16:15 "
                        "conv4-84:second:4:15, instead of every combination of the four options above")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--rounds", type=int, default=1, help="repeat every measurement, interleaved; report the median")
    p.add_argument("--results", default=str(RESULTS), help="folder for the JSON, table and plot")
    p.add_argument("--name", default="meta_step")
    p.add_argument("--malloc", choices=["keep", "system"], default="keep",
                   help="every row's process, ours and the peers': keep freed memory for reuse (what run commands "
                        "do, run.malloc), or glibc's defaults")
    args = p.parse_args()
    if args.one:
        kept = False
        if args.malloc == "keep":
            from metaticket.hardware import keep_freed_memory

            kept = keep_freed_memory()
        print(json.dumps(measure(*args.one, args.meta_batch[0], args.reps, args.queries[0]) | {"malloc_kept": kept}))
        return
    grid = cells(args)  # a malformed --cells is refused before anything runs
    if any(i in PEERS for i in args.impls) and not Path(args.peers_python).exists():
        sys.exit(f"no peers interpreter at {args.peers_python}: python -m venv .venv-peers && .venv-peers/bin/pip "
                 f"install torch==2.14.1 pyyaml tqdm && (. .venv-peers/bin/activate && bash "
                 f"../shared/peers/install-learn2learn.sh), or pass --impls without the peers")
    import torch

    peak = peaks()
    rows = []
    for model, order, meta_batch, queries in grid:
        # rounds interleave the implementations, so a burst of load on the machine hits all of them alike
        runs: dict[str, list[dict]] = {impl: [] for impl in args.impls}
        for _ in range(args.rounds):
            for impl in args.impls:
                python = args.peers_python if impl in PEERS else sys.executable
                row = run_one(python, impl, model, order, meta_batch, args.reps, queries, args.malloc)
                print(json.dumps({k: v for k, v in row.items() if k != "times_ms"}), flush=True)
                runs[impl].append(row)
        rows += [(row := combine(r)) | rates(row, peak) for r in runs.values()]
    roofline(rows, peak)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    out = {"machine": f"{os.cpu_count()} CPU cores", "cpu": cpu(), "peak_gflops": peak, "settings": {
        "ways": WAYS, "shots": SHOTS, "queries": args.queries, "inner_lr": INNER_LR, "inner_steps": 1,
        "meta_batch": args.meta_batch, "cells": [":".join(map(str, c)) for c in grid],
        "reps": args.reps, "rounds": args.rounds, "malloc": args.malloc,
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads()}, "rows": rows}
    (results / f"{args.name}.json").write_text(json.dumps(out, indent=2))
    machine = cpu()
    flags = ", ".join(machine["flags"]) or "no AVX2"
    native = bool({"avx512_bf16", "amx_bf16"} & set(machine["flags"]))
    md = table(rows, native_bf16=native) + (f"\nmatmul peaks (up to 2048 x 2048 x 2048, {torch.get_num_threads()} "
                                            f"threads) on {machine['model']} ({flags}): fp32 {peak['fp32']:.1f}, "
                                            f"bf16 {peak['bf16']:.1f} GFLOP/s\n")
    (results / f"{args.name}.md").write_text(md)
    try:
        plot(rows, results / f"{args.name}.png")
    except ImportError:
        print("matplotlib is not installed: no PNG", file=sys.stderr)
    print(md)


if __name__ == "__main__":
    main()
