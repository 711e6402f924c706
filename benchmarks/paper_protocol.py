"""Benchmark: MAML vs Meta-ticket vs Meta-ticket + IteRand by width under the paper's Omniglot protocol (issue 18).

    python benchmarks/paper_protocol.py train --widths 1 4 --steps 10000 --seeds 1 [--threads 1]
    python benchmarks/paper_protocol.py train --arch conv4 --methods maml metaticket --steps 5000
    python benchmarks/paper_protocol.py train --widths 1 --tag q15 --set data.queries=15 --steps 10000
    python benchmarks/paper_protocol.py report --steps 10000

``train`` meta-trains every (method, width, seed) of ``configs/omniglot/paper/`` at one equal budget
(``--steps`` x meta-batch 4) into ``runs/paper/``, resuming an interrupted run from its last checkpoint and
skipping finished ones, then scores the last checkpoint on 1,000 test tasks. ``--arch conv4`` trains the Conv4
configs instead of the MLP widths; ``--tag NAME`` with ``--set`` overrides names a controlled variant of the
protocol (its runs get their own folders and their own table rows). ``report`` collects the finished runs into
``benchmarks/results/paper_protocol_<steps>.json`` (meta-test lines, validation curves, ms per step) and draws
test accuracy against width (one line per method, protocol runs only) and the validation curves.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from protocol_run import append, protocol, train_and_test  # noqa: E402

from metaticket.config import load_run_config  # noqa: E402
from metaticket.hardware import cpu_info  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "configs" / "omniglot" / "paper"
METHODS = ("maml", "metaticket", "metaticket_iterand")
# run folder: <arch>_5w1s_<method>[_<tag>]_<steps>x<meta-batch>_seed<seed>, arch "mlp-w<width>" or "conv4"
FOLDER = re.compile(
    r"^(?P<arch>mlp-w\d+|conv4)_5w1s_(?P<method>"
    + "|".join(sorted(METHODS, key=len, reverse=True))
    + r")(?:_(?P<tag>[a-z0-9-]+))?_(?P<steps>\d+)x(?P<batch>\d+)_seed(?P<seed>\d+)$"
)


def run_dir(out: Path, arch: str, method: str, seed: int, steps: int, tag: str = "", meta_batch: int = 4) -> Path:
    return out / f"{arch}_5w1s_{method}{'_' + tag if tag else ''}_{steps}x{meta_batch}_seed{seed}"


def cpu() -> dict:
    """The CPU a run ran on: model name and the vector extensions that change float speed and rounding."""
    return cpu_info()


def protocol_line(folder: Path, line: dict, arch: str, method: str, tag: str, seed: int, minutes: float) -> dict:
    """One result line that names its whole protocol (:func:`protocol_run.protocol`) and the run's cell."""
    c = load_run_config(folder / "config.yaml")
    return {"arch": arch, "method": method, "tag": tag, "seed": seed, **protocol(folder, line, minutes),
            "queries_test": line.get("queries"), "inner_steps_test": line["inner_steps_test"],
            "vectorize": c.meta.vectorize, "accuracy": line["accuracy"]}


def train_one(
    out: Path, arch: str, method: str, seed: int, steps: int, threads: int, extra: list[str], tag: str = "",
    test_tasks: int = 1000, record: Path | None = None, meta_batch: int = 4,
) -> dict:
    """Meta-train (or resume) one run and meta-test its last checkpoint; returns the meta-test line. With
    ``record``, the run's :func:`protocol_line` is appended to that JSON-lines file when the run ends."""
    folder = run_dir(out, arch, method, seed, steps, tag, meta_batch)
    sets = [f"meta.steps={steps}", f"meta.meta_batch={meta_batch}", f"run.seed={seed}", f"run.threads={threads}",
            *extra]
    line, minutes = train_and_test(CONFIGS / f"{arch}_5w1s_{method}.yaml", sets, folder, test_tasks)
    if minutes is not None:
        append(record, protocol_line(folder, line, arch, method, tag, seed, minutes))
    return line


def collect(out: Path, steps: int) -> list[dict]:
    rows = []
    for folder in sorted(out.glob(f"*_5w1s_*_{steps}x4_seed*")):
        result = folder / "meta_test_last.json"
        match = FOLDER.match(folder.name)
        if not result.is_file() or match is None:
            continue
        arch, method, tag, seed = match["arch"], match["method"], match["tag"] or "", match["seed"]
        width = int(arch.removeprefix("mlp-w")) if arch.startswith("mlp-w") else None
        metrics = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
        summary = json.loads((folder / "train_summary.json").read_text())
        rows.append(
            {
                "arch": arch,
                "method": method,
                "tag": tag,
                "width": width,
                "seed": int(seed),
                "test": json.loads(result.read_text()),
                "ms_per_step": round(summary["ms_per_step"], 1),
                "val_curve": [
                    {"step": m["step"], "acc": m["acc"], "ci95": m["ci95"], "sparsity": m.get("sparsity"),
                     "layers": {k.removeprefix("sparsity/"): round(v, 4) for k, v in m.items()
                                if k.startswith("sparsity/")}}
                    for m in metrics
                    if m["split"] == "val"
                ],
            }
        )
    return rows


def table(rows: list[dict]) -> list[dict]:
    """One line per (arch, tag, method): mean test accuracy over seeds, the per-seed CIs, sparsity."""
    out = []
    for arch, tag in sorted({(r["arch"], r["tag"]) for r in rows}, key=lambda k: (k[1], k[0] == "conv4", k[0])):
        for method in METHODS:
            sel = [r for r in rows if (r["arch"], r["tag"], r["method"]) == (arch, tag, method)]
            if not sel:
                continue
            accs = [r["test"]["accuracy"] for r in sel]
            out.append(
                {
                    "arch": arch,
                    "tag": tag,
                    "method": method,
                    "width": sel[0]["width"],
                    "seeds": len(sel),
                    "accuracy": round(statistics.mean(accs), 2),
                    "ci95_tasks": round(max(r["test"]["ci95"] for r in sel), 2),
                    "ci95_seeds": round(1.96 * statistics.stdev(accs) / len(accs) ** 0.5, 2) if len(accs) > 1 else None,
                    "sparsity": round(statistics.mean(r["test"]["sparsity"] for r in sel), 3),
                }
            )
    return out


def plot(rows: list[dict], lines: list[dict], steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, third) = plt.subplots(1, 3, figsize=(16, 4), constrained_layout=True)
    styles = {1: "-", 2: "-.", 4: "--", 8: ":"}  # one colour per method, one line style per width
    # the by-width question: MLP runs of the protocol itself (controlled variants and Conv4 are in the table)
    rows = [r for r in rows if r["width"] is not None and not r["tag"]]
    lines = [t for t in lines if t["width"] is not None and not t["tag"]]
    for colour, method in zip(("C0", "C1", "C2"), METHODS):
        sel = [t for t in lines if t["method"] == method]
        if sel:
            left.errorbar(
                [t["width"] for t in sel],
                [t["accuracy"] for t in sel],
                yerr=[t["ci95_tasks"] for t in sel],
                marker="o",
                capsize=3,
                label=method,
                color=colour,
            )
        for r in (r for r in rows if r["method"] == method):
            c = r["val_curve"]
            right.plot(
                [p["step"] for p in c],
                [p["acc"] for p in c],
                color=colour,
                linestyle=styles.get(r["width"], "-"),
                label=f"{method} w{r['width']} s{r['seed']}",
            )
    # where the masks settle: each layer's sparsity during Meta-ticket training (MLP, protocol runs)
    for r in (r for r in rows if r["method"] == "metaticket"):
        c = [p for p in r["val_curve"] if p["layers"]]
        for colour, layer in zip(("C0", "C1", "C2", "C3", "C4", "C5"), sorted(c[0]["layers"]) if c else []):
            third.plot([p["step"] for p in c], [p["layers"][layer] for p in c], color=colour,
                       linestyle=styles.get(r["width"], "-"), label=f"{layer} w{r['width']} s{r['seed']}")
    third.set_xlabel("meta-step")
    third.set_ylabel("sparsity (fraction pruned) per layer")
    third.set_title("Meta-ticket: per-layer sparsity on validation checkpoints", fontsize=9)
    third.grid(alpha=0.3)
    third.legend(fontsize=6, ncol=2)
    widths = sorted({t["width"] for t in lines})
    left.set_xscale("log", base=2)
    left.set_xticks(widths, [str(w) for w in widths])
    left.set_xlabel("MLP width factor")
    left.set_ylabel("test accuracy (%), 1,000 tasks, last checkpoint")
    left.set_title(f"Omniglot 5w1s, paper protocol, {steps} x 4 meta-steps", fontsize=9)
    right.set_xlabel("meta-step")
    right.set_ylabel("validation accuracy (%), 200 tasks")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def old_protocol_lines(path: Path = RESULTS / "paper_protocol_30000.json") -> list[dict]:
    """The 30k x 4 rows measured before config format 3 (random-character split, start gradient), as protocol
    lines: the old/start cell of the ablation."""
    if not path.is_file():
        return []
    out = []
    for r in json.loads(path.read_text())["runs"]:
        if r["tag"] or r["arch"] == "conv4":
            continue
        t = r["test"]
        out.append({"arch": r["arch"], "method": r["method"], "tag": "maml-start (format 2)", "seed": r["seed"],
                    "split": "maml", "score_grad": "start" if r["method"].startswith("metaticket") else None,
                    "queries": t["queries"], "checkpoint": t["checkpoint"], "meta_steps": t["meta_steps"],
                    "meta_batch": t["meta_batch"], "accuracy": t["accuracy"], "ci95": t["ci95"],
                    "tasks": t["tasks"], "sparsity": t["sparsity"], "ms_per_step": r["ms_per_step"],
                    "cpu": {"model": "AMD EPYC (session 9)", "flags": ["avx2", "avx512_bf16", "avx512f"]}})
    return out


def summarize(lines: list[dict]) -> list[dict]:
    """One row per protocol (arch, method, split, score_grad, budget): mean over seeds, the seeds' spread (95% CI
    over seeds, 1.96 std / sqrt(n)), the widest per-run task CI."""
    groups: dict[tuple, list[dict]] = {}
    for line in lines:
        key = (line["arch"], line["method"], line["split"], line["score_grad"], line["meta_steps"],
               line["meta_batch"], line["queries"], line["checkpoint"])
        groups.setdefault(key, []).append(line)
    out = []
    for (arch, method, split, grad, steps, batch, queries, checkpoint), sel in sorted(groups.items(),
                                                                                      key=lambda kv: str(kv[0])):
        accs = [x["accuracy"] for x in sel]
        out.append({"arch": arch, "width": int(arch.removeprefix("mlp-w")) if arch.startswith("mlp-w") else None,
                    "method": method, "split": split, "score_grad": grad, "meta_steps": steps, "meta_batch": batch,
                    "queries": queries, "checkpoint": checkpoint, "seeds": sorted(x["seed"] for x in sel),
                    "accuracy": round(statistics.mean(accs), 2), "per_seed": [x["accuracy"] for x in sel],
                    "ci95_tasks": round(max(x["ci95"] for x in sel), 2),
                    "ci95_seeds": round(1.96 * statistics.stdev(accs) / len(accs) ** 0.5, 2) if len(accs) > 1
                    else None,
                    "sparsity": round(statistics.mean(x["sparsity"] for x in sel), 3),
                    "cpus": sorted({x["cpu"]["model"] + " " + "/".join(x["cpu"]["flags"]) for x in sel})})
    return out


def write_table(record: Path, out: Path) -> int:
    """``table``: results/paper_protocol_v3.{json,md,png} from the protocol lines of ``record``."""
    if not record.is_file():
        sys.exit(f"{record} holds no protocol lines yet; run the train action with --record {record}")
    lines = [json.loads(x) for x in record.read_text().splitlines() if x.strip()]
    rows = summarize(lines + old_protocol_lines())
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_protocol_v3.json").write_text(json.dumps({"rows": rows, "lines": lines}, indent=1) + "\n")

    def cell(r: dict | None) -> str:
        if r is None:
            return "not run"
        spread = f", seeds {'/'.join(f'{a:.2f}' for a in r['per_seed'])} (+- {r['ci95_seeds']})" \
            if r["ci95_seeds"] is not None else ""
        return f"{r['accuracy']:.2f} +- {r['ci95_tasks']:.2f}{spread}"

    def find(arch: str, method: str, split: str, grad: str | None) -> dict | None:
        return next((r for r in rows if (r["arch"], r["method"], r["split"], r["score_grad"], r["meta_steps"],
                                         r["meta_batch"]) == (arch, method, split, grad, 30000, 4)), None)

    md = ["| MLP width | MAML (vinyals) | Meta-ticket (vinyals, reference) | gap (MT - MAML) | MT sparsity | "
          "format 2 (maml split, start): MAML / MT, gap |", "|---|---|---|---|---|---|"]
    for w in (1, 2, 4, 8):
        a, b = find(f"mlp-w{w}", "maml", "vinyals", None), find(f"mlp-w{w}", "metaticket", "vinyals", "reference")
        gap = f"{b['accuracy'] - a['accuracy']:+.2f}" if a and b else ""
        oa, ob = find(f"mlp-w{w}", "maml", "maml", None), find(f"mlp-w{w}", "metaticket", "maml", "start")
        old = f"{oa['accuracy']:.2f} / {ob['accuracy']:.2f}, {ob['accuracy'] - oa['accuracy']:+.2f}" if oa and ob \
            else ""
        md.append(f"| {w} | {cell(a)} | {cell(b)} | {gap} | {b['sparsity'] if b else ''} | {old} |")
    md += ["", "| Meta-ticket, seed 1 | split maml (random characters) | split vinyals (alphabets held out) |",
           "|---|---|---|"]
    for w in (1, 8):
        for grad in ("start", "reference"):
            cells = []
            for split in ("maml", "vinyals"):
                r = find(f"mlp-w{w}", "metaticket", split, grad)
                one = None
                if r is not None:
                    line = next((x for x in lines + old_protocol_lines() if x["arch"] == r["arch"] and
                                 x["method"] == "metaticket" and x["split"] == split and x["score_grad"] == grad and
                                 x["seed"] == 1 and x["meta_steps"] == 30000), None)
                    one = f"{line['accuracy']:.2f} +- {line['ci95']:.2f}" if line else None
                cells.append(one or "not run")
            md.append(f"| width {w}, score_grad {grad} | {cells[0]} | {cells[1]} |")
    anchors = [x for x in lines if x["method"] == "maml" and x["meta_batch"] != 4]
    if anchors:
        md += ["", "| MAML anchor (MAML paper's protocol) | split | budget | inner lr (mean loss) | test tasks | "
                   "ours | published |", "|---|---|---|---|---|---|---|"]
        for x in anchors:
            md.append(f"| {x['arch']}, seed {x['seed']} | {x['split']} | {x['meta_steps']} x {x['meta_batch']} | "
                      f"{x['inner_lr']} | {x['tasks']} | {x['accuracy']:.2f} +- {x['ci95']:.2f} | 89.7 +- 1.1 |")
    (out / "paper_protocol_v3.md").write_text("\n".join(md) + "\n")
    plot_v3(rows, out / "paper_protocol_v3.png")
    print("\n".join(md))
    return 0


def plot_v3(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    series = [("maml", "vinyals", None, "C0", "-", "MAML, vinyals"),
              ("metaticket", "vinyals", "reference", "C1", "-", "Meta-ticket, vinyals, reference"),
              ("maml", "maml", None, "C0", ":", "MAML, maml split (format 2)"),
              ("metaticket", "maml", "start", "C1", ":", "Meta-ticket, maml split, start (format 2)")]
    for method, split, grad, colour, style, label in series:
        sel = sorted((r for r in rows if (r["method"], r["split"], r["score_grad"], r["meta_steps"],
                                          r["meta_batch"]) == (method, split, grad, 30000, 4) and r["width"]),
                     key=lambda r: r["width"])
        if not sel:
            continue
        ax.errorbar([r["width"] for r in sel], [r["accuracy"] for r in sel], yerr=[r["ci95_tasks"] for r in sel],
                    color=colour, linestyle=style, marker="o", capsize=3, label=label)
        for r in sel:
            ax.scatter([r["width"]] * len(r["per_seed"]), r["per_seed"], color=colour, s=10, alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
    ax.set_xlabel("MLP width factor")
    ax.set_ylabel("test accuracy (%), 1,000 tasks, last checkpoint")
    ax.set_title("Omniglot 5w1s, paper protocol, 30k x 4 (dots: seeds; bars: task CI)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["train", "report", "table"],
                   help="table: the by-width table, seeds and ablation from the --record file's protocol lines")
    p.add_argument("--arch", choices=["mlp", "conv4"], default="mlp", help="the MLP at --widths, or Conv4")
    p.add_argument("--widths", type=int, nargs="+", default=[1, 4])
    p.add_argument("--tag", default="", help="name of a controlled variant set with --set (lowercase, digits, -)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--steps", type=int, default=30000, help="meta-steps of every run")
    p.add_argument("--meta-batch", type=int, default=4, help="tasks per meta-step (the protocol: 4)")
    p.add_argument("--threads", type=int, default=0, help="run.threads of the training runs (0: torch's default)")
    p.add_argument("--test-tasks", type=int, default=1000, help="test tasks scored per run (the protocol: 1,000)")
    p.add_argument("--set", action="append", default=[], help="extra config override for every run")
    p.add_argument("--record", default=None, help="append each finished run's protocol line to this JSON-lines "
                   "file (e.g. benchmarks/results/paper_protocol_runs.jsonl)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "paper"))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    runs_dir = Path(args.runs)
    if args.tag and not re.fullmatch(r"[a-z0-9-]+", args.tag):
        p.error(f"--tag {args.tag!r}: use lowercase letters, digits and '-'")
    if args.action == "train":
        archs = [f"mlp-w{w}" for w in args.widths] if args.arch == "mlp" else ["conv4"]
        for seed in args.seeds:
            for arch in archs:
                for method in args.methods:
                    line = train_one(runs_dir, arch, method, seed, args.steps, args.threads, args.set, args.tag,
                                     args.test_tasks, Path(args.record) if args.record else None,
                                     args.meta_batch)
                    print(
                        json.dumps(
                            {
                                "arch": arch,
                                "method": method,
                                "tag": args.tag,
                                "seed": seed,
                                "accuracy": line["accuracy"],
                                "ci95": line["ci95"],
                            }
                        ),
                        flush=True,
                    )
        return 0
    if args.action == "table":
        return write_table(Path(args.record or RESULTS / "paper_protocol_runs.jsonl"), Path(args.out))
    rows = collect(runs_dir, args.steps)
    if not rows:
        sys.exit(f"no finished runs of {args.steps} steps under {runs_dir}; run the train action first")
    lines = table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"paper_protocol_{args.steps}"
    (out / f"{tag}.json").write_text(
        json.dumps({"steps": args.steps, "meta_batch": 4, "table": lines, "runs": rows}, indent=1) + "\n"
    )
    plot(rows, lines, args.steps, out / f"{tag}.png")
    for t in lines:
        print(json.dumps(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
