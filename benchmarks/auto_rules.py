"""Benchmark: do the learner's ``auto`` choices pick the faster path on this CPU? (issue 32, item 6)

    python benchmarks/auto_rules.py [--reps 5] [--rounds 3] [--threads 0] [--name auto_rules_<cpu>_<flags>]

Each rule was chosen from measurements on one machine; this re-checks it on the machine it runs on, in one process,
the alternatives interleaved over ``--rounds`` (median of each round's median of ``--reps`` meta-steps after 2
warm-up steps), on the synthetic tasks of ``meta_step.py`` (5-way 1-shot, meta-batch 16 for MLPs and 4 for Conv4,
second order, one inner step):

- ``vmap_wins`` (``VMAP_MAX_WEIGHT``): per-task paths run vmap over tasks for MLPs whose largest weight has at most
  2^18 entries, else a loop. Checked where the per-task path runs: Meta-ticket with 15 queries per class, MLP
  widths 1 (auto: vmap) and 2 (auto: loop).
- channels-last for convolutions on the loop path (always on): Conv4, MAML and Meta-ticket, 15 queries, against
  the channels-first order.
- ``MASKED_FACTOR_MAX`` is re-checked by ``factored_masks.py`` (its rows name the CPU).

Writes ``benchmarks/results/<name>.{json,md}``: per case the auto choice, every alternative's ms per meta-step,
and whether auto's was the fastest (or within ``--tolerance`` of it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from meta_step import ours  # noqa: E402

from metaticket.hardware import cpu_info, keep_freed_memory  # noqa: E402

# (rule, case label, meta_step impl, model, meta-batch, queries, {alternative: learner setting})
CASES = [
    ("vmap_wins", "MLP width 1, Meta-ticket, 15 queries", "ours-metaticket-threshold", "mlp", 16, 15,
     {"vmap": ("vectorize", "vmap"), "loop": ("vectorize", "loop")}),
    ("vmap_wins", "MLP width 2, Meta-ticket, 15 queries", "ours-metaticket-threshold", "mlp-w2", 16, 15,
     {"vmap": ("vectorize", "vmap"), "loop": ("vectorize", "loop")}),
    ("channels_last", "Conv4 28 x 28, MAML, 15 queries", "ours-maml", "conv4", 4, 15,
     {"channels-last": ("channels_last", True), "channels-first": ("channels_last", False)}),
    ("channels_last", "Conv4 28 x 28, Meta-ticket, 15 queries", "ours-metaticket-threshold", "conv4", 4, 15,
     {"channels-last": ("channels_last", True), "channels-first": ("channels_last", False)}),
]


def auto_choice(impl: str, model: str, meta_batch: int, queries: int, alternatives: dict) -> str:
    """The alternative ``auto`` takes for this case."""
    _, learner, _ = ours(impl, model, False, meta_batch, queries)
    for name, (attr, value) in alternatives.items():
        actual = learner.per_task if attr == "vectorize" and learner.vectorize == "factored" else \
            getattr(learner, attr)
        if actual == value:
            return name
    raise RuntimeError(f"auto ran none of {list(alternatives)}")


def step_fn(impl: str, model: str, meta_batch: int, queries: int, attr: str, value):
    """A meta-step of the case with the learner set to one alternative."""
    if attr == "vectorize":
        step, _, _ = ours(impl, model, False, meta_batch, queries, vectorize=value)
    else:
        step, learner, _ = ours(impl, model, False, meta_batch, queries)
        setattr(learner, attr, value)
    for _ in range(2):
        step()
    return step


def median_ms(step, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    p.add_argument("--tolerance", type=float, default=0.05, help="auto counts as right within this of the best")
    p.add_argument("--cases", type=int, nargs="+", default=None, help="indices into the case list (default all)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default=None, help="default auto_rules_<cpu model>_<its flags of note>")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as run commands do (run.malloc: keep)
    cpu = cpu_info()
    rows = []
    for i, (rule, label, impl, model, meta_batch, queries, alternatives) in enumerate(CASES):
        if args.cases is not None and i not in args.cases:
            continue
        steps = {name: step_fn(impl, model, meta_batch, queries, *setting) for name, setting in alternatives.items()}
        rounds: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                rounds[name].append(median_ms(step, args.reps))
        ms = {name: round(statistics.median(v), 1) for name, v in rounds.items()}
        choice = auto_choice(impl, model, meta_batch, queries, alternatives)
        best = min(ms, key=ms.get)
        rows.append({"rule": rule, "case": label, "model": model, "impl": impl, "meta_batch": meta_batch,
                     "queries": queries, "order": "second", "auto": choice, "ms": ms, "round_ms": rounds,
                     "fastest": best, "auto_over_fastest": round(ms[choice] / ms[best], 3),
                     "auto_right": ms[choice] <= (1 + args.tolerance) * ms[best]})
        print(json.dumps(rows[-1]), flush=True)
    model_name = "".join(c if c.isalnum() else "-" for c in cpu["model"].lower()).strip("-")
    name = args.name or f"auto_rules_{model_name}_{'-'.join(cpu['flags']) or 'no-avx2'}"  # one CPU kind per file
    out = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "reps": args.reps,
           "rounds": args.rounds, "tolerance": args.tolerance, "rows": rows}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    md = [f"CPU: {cpu['model']} ({', '.join(cpu['flags']) or 'no AVX2'}), {torch.get_num_threads()} threads", "",
          "| rule | case | auto | ms per meta-step | auto / fastest | auto right? |", "|---|---|---|---|---|---|"]
    for r in rows:
        times = ", ".join(f"{k} {v:g}" for k, v in r["ms"].items())
        md.append(f"| {r['rule']} | {r['case']} | {r['auto']} | {times} | {r['auto_over_fastest']:.2f} | "
                  f"{'yes' if r['auto_right'] else 'no'} |")
    (results / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
