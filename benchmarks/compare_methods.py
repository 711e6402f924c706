"""Benchmark: several methods (or configs) at one budget, trained and tested on the same tasks.

    python benchmarks/compare_methods.py --name NAME --config configs/tinyimagenet/conv4_5w5s_{method}.yaml \\
        --methods maml anil boil metaticket metaticket_boil [--set k=v ...] [--method-set METHOD:k=v ...]

Runs ``benchmarks/meta_run.py`` per method (``{method}`` in --config is replaced), then writes
``benchmarks/results/<NAME>.json``, ``<NAME>.md`` (the table) and ``<NAME>.png`` (accuracy with 95% CI).
Methods already measured (their JSON exists) are not run again, so an interrupted comparison resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import meta_run

RESULTS = meta_run.RESULTS


def table(name: str, results: list[dict]) -> str:
    lines = [f"### {name}", "", "| method | accuracy (%) | 95% CI | sparsity | meta-steps | ms/step | train min |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["test"]
        lines.append(f"| {t['method']} | {t['accuracy']:.2f} | +- {t['ci95']:.2f} | {t['sparsity']:.3f} | "
                     f"{r['steps']} | {r['ms_per_meta_step']:.0f} | {r['train_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(name: str, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.3 * len(results) + 2, 3.5))
    names = [r["test"]["method"] for r in results]
    ax.bar(names, [r["test"]["accuracy"] for r in results], yerr=[r["test"]["ci95"] for r in results], capsize=4,
           color="tab:blue", alpha=0.8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(name, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--config", required=True, help="config path with {method} in it")
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--set", action="append", default=[], help="override for every method: section.key=value")
    p.add_argument("--method-set", action="append", default=[], metavar="METHOD:SECTION.KEY=VALUE",
                   help="override for one method only")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON, table and PNG")
    args = p.parse_args()
    out = Path(args.out)
    results = []
    for method in args.methods:
        tag = f"{args.name}_{method}"
        done = out / f"{tag}.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        argv = [args.config.format(method=method), "--tag", tag, "--tasks", str(args.tasks), "--out", str(out)]
        own = [m.split(":", 1)[1] for m in args.method_set if m.split(":", 1)[0] == method]
        argv += [a for s in [*args.set, *own] for a in ("--set", s)]
        results.append(meta_run.main(argv))
    md = table(args.name, results)
    (out / f"{args.name}.md").write_text(md)
    (out / f"{args.name}.json").write_text(json.dumps({"name": args.name, "overrides": args.set,
                                                           "method_overrides": args.method_set,
                                                           "results": results}, indent=2) + "\n")
    plot(args.name, results, out / f"{args.name}.png")
    print(md)


if __name__ == "__main__":
    main()
