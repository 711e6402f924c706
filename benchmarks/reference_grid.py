"""Benchmark: the rest of the reference code's grid (issue 33): sinusoid regression, Omniglot 5w5s and 20w1s, the
masked head, one run at a time, each recorded with its whole protocol.

    python benchmarks/reference_grid.py train sinusoid/mlp_5shot_maml --seed 1 [--steps 30000] [--threads 1]
    python benchmarks/reference_grid.py train omniglot/paper/mlp-w1_5w1s_metaticket --tag 5w5s \\
        --set data.shots=5 --set data.queries=5 --record benchmarks/results/reference_grid_runs.jsonl
    python benchmarks/reference_grid.py train tinyimagenet/conv4_5w1s_metaticket --tag 32px --cross-domain cifar10 \\
        --set data.image_size=32 --set model.width=0.5 --steps 1000
    python benchmarks/reference_grid.py table [--record benchmarks/results/reference_grid_runs.jsonl]

``train`` meta-trains the shipped config (a name as ``metaticket configs`` lists it, or a path) with the overrides
into ``--runs``/<name>[_<tag>]_<steps>x<meta-batch>_seed<seed>, resuming an interrupted run, meta-tests the last
checkpoint on the config's ``eval.test_tasks`` (1,000 for these configs) and appends one line to ``--record``:
the config, dataset, ways, shots, queries, split, score gradient, method, width, the metric (accuracy in percent,
or MSE) with its 95% CI over tasks, checkpoint, budget, seed, threads, CPU, commit and minutes. ``--cross-domain D``
also meta-tests the same checkpoint on data set D's test classes (as ``run.py meta-test --dataset D``) and adds that
result to the line as ``cross_domain``. ``table`` writes
``results/reference_grid.{json,md}`` from the record: one row per (config, tag), mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from protocol_run import append, last_checkpoint_test, metric_of, protocol, train_and_test  # noqa: E402

from metaticket.config import ConfigError, load_config, load_run_config  # noqa: E402
from metaticket.data import list_datasets  # noqa: E402
from metaticket.errors import MetaticketError  # noqa: E402
from metaticket.runs import commands as runs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RECORD = RESULTS / "reference_grid_runs.jsonl"


def folder_name(config: str, tag: str, steps: int, meta_batch: int, seed: int) -> str:
    base = config.replace("/", "_")
    return f"{base}{'_' + tag if tag else ''}_{steps}x{meta_batch}_seed{seed}"


def cross_domain_test(folder: Path, dataset: str, n_tasks: int | None) -> dict:
    """Meta-test ``folder``'s last checkpoint on ``dataset``'s test classes (:func:`protocol_run.last_checkpoint_test`);
    returns dataset, metric, value, ci95 and tasks."""
    line = last_checkpoint_test(folder, runs.Context.from_environment(os.environ), n_tasks, dataset)
    metric = metric_of(line)
    return {"dataset": dataset, "metric": metric, "value": line[metric], "ci95": line["ci95"], "tasks": line["tasks"]}


def protocol_line(folder: Path, line: dict, config: str, tag: str, seed: int, minutes: float) -> dict:
    """The run's result with everything that defines its protocol (:func:`protocol_run.protocol`), so tables never
    mix protocols."""
    c = load_run_config(folder / "config.yaml")
    metric = metric_of(line)
    return {"config": config, "tag": tag, "seed": seed, "dataset": c.data.dataset, "ways": c.data.ways,
            "shots": c.data.shots, "method": c.meta.method, "model": c.model.name, "width": c.model.width,
            "dense_head": c.model.dense_head, "metric": metric, "value": line[metric],
            **protocol(folder, line, minutes)}


def train_one(config: str, tag: str, seed: int, steps: int | None, meta_batch: int | None, threads: int,
              extra: list[str], out: Path, record: Path | None, cross_domain: str | None = None) -> dict:
    """Meta-train (or resume) one run, meta-test its last checkpoint (and on ``cross_domain``'s test classes), append
    its protocol line to ``record``."""
    base = load_config(config, extra)
    steps = steps or base.meta.steps
    meta_batch = meta_batch or base.meta.meta_batch
    folder = out / folder_name(config, tag, steps, meta_batch, seed)
    sets = [*extra, f"meta.steps={steps}", f"meta.meta_batch={meta_batch}", f"run.seed={seed}",
            f"run.threads={threads}"]
    line, minutes = train_and_test(config, sets, folder)
    if minutes is not None:
        started = time.perf_counter()
        entry = protocol_line(folder, line, config, tag, seed, minutes)
        if cross_domain:
            entry["cross_domain"] = cross_domain_test(folder, cross_domain, line["tasks"])
            entry["minutes"] = round(minutes + (time.perf_counter() - started) / 60, 1)
        append(record, entry)
    return line


def cross(results: list[dict]) -> str:
    """The cross-domain column: ``cifar10 41.2 +- 1.1`` per seed, or empty."""
    return ", ".join(f"{c['dataset']} {c['value']:g} +- {c['ci95']:g}" for c in results)


def table(record: Path, out: Path) -> int:
    lines = [json.loads(x) for x in record.read_text().splitlines() if x.strip()] if record.is_file() else []
    if not lines:
        sys.exit(f"no runs recorded in {record}; run the train action with --record first")
    groups: dict[tuple, list[dict]] = {}
    for r in lines:
        groups.setdefault((r["config"], r["tag"], r["meta_steps"], r["meta_batch"]), []).append(r)
    rows = []
    for (config, tag, steps, batch), rs in sorted(groups.items()):
        values = [r["value"] for r in rs]
        rows.append({"config": config, "tag": tag, "dataset": rs[0]["dataset"], "ways": rs[0]["ways"],
                     "shots": rs[0]["shots"], "method": rs[0]["method"], "width": rs[0]["width"],
                     "split": rs[0]["split"], "score_grad": rs[0]["score_grad"], "metric": rs[0]["metric"],
                     "budget": f"{steps} x {batch}", "seeds": sorted(r["seed"] for r in rs),
                     "mean": round(statistics.mean(values), 4),
                     "seed_spread": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                     "task_ci95": [r["ci95"] for r in rs],
                     "cross_domain": [r["cross_domain"] for r in rs if r.get("cross_domain")], "runs": rs})
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference_grid.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    md = ["| config | tag | task | method | width | split / score gradient | budget | seeds | result (task CI) | "
          "cross-domain (task CI) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        task = "sinusoid" if r["dataset"] == "sinusoid" else f"{r['dataset']} {r['ways']}w{r['shots']}s"
        proto = " / ".join(str(x) for x in (r["split"], r["score_grad"]) if x) or "-"
        unit = "%" if r["metric"] == "accuracy" else " MSE"
        cis = ", ".join(f"+- {c:g}" for c in r["task_ci95"])
        spread = f" (seeds +- {r['seed_spread']:g})" if r["seed_spread"] is not None else ""
        md.append(f"| {r['config']} | {r['tag'] or ''} | {task} | {r['method']} | {r['width']:g} | {proto} | "
                  f"{r['budget']} | {', '.join(map(str, r['seeds']))} | {r['mean']:g}{unit}{spread} ({cis}) | "
                  f"{cross(r['cross_domain'])} |")
    (out / "reference_grid.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["train", "table"])
    p.add_argument("config", nargs="?", help="a shipped config name (omniglot/paper/mlp-w1_5w1s_maml) or a path")
    p.add_argument("--tag", default="", help="name of a variant set with --set (lowercase, digits, -)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="meta-steps (default: the config's)")
    p.add_argument("--meta-batch", type=int, default=None, help="tasks per meta-step (default: the config's)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="config override section.key=value")
    p.add_argument("--cross-domain", default=None, metavar="DATASET",
                   help="also meta-test the last checkpoint on this data set's test classes (e.g. cifar10)")
    p.add_argument("--record", default=str(RECORD), help="JSON-lines file the train action appends to")
    p.add_argument("--runs", default=str(ROOT / "runs" / "grid"))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.action == "table":
        return table(Path(args.record), Path(args.out))
    if not args.config:
        p.error("train needs a config")
    if args.cross_domain and args.cross_domain not in list_datasets(episodes=True):
        p.error(f"--cross-domain {args.cross_domain}: not a few-shot data set; pick one of "
                f"{', '.join(list_datasets(episodes=True))}")
    try:
        line = train_one(args.config, args.tag, args.seed, args.steps, args.meta_batch, args.threads, args.set,
                         Path(args.runs), Path(args.record) if args.record else None, args.cross_domain)
    except (ConfigError, MetaticketError) as e:  # e.g. a run whose loss became NaN: one line, no traceback
        sys.exit(f"error: {e}")
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
