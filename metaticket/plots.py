"""PNG curves from runs' ``metrics.jsonl`` files, for comparing runs without TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from metaticket.errors import MetaticketError

# (axis label, candidate (split, key) pairs) per panel: the first pair a run has wins (meta-learning runs
# validate, supervised runs test)
PANELS = [
    ("accuracy (%)", [("val", "acc"), ("test", "top1")]),
    ("training loss", [("train", "loss")]),
    ("sparsity (fraction pruned)", [("val", "sparsity"), ("test", "sparsity")]),
]


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise MetaticketError(f"{run_dir} has no metrics.jsonl; pass run folders written by meta-train or train")
    rows = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError(line[:40])
            rows.append(row)
        except ValueError:  # JSONDecodeError is a ValueError
            if n < len(lines):  # only a run killed mid-write leaves a torn last line
                raise MetaticketError(f"{path} line {n} is not a JSON record with a step; the file is damaged") \
                    from None
    return rows


def curve(rows: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``split/key``, keeping the last value logged at each step (resumed runs repeat steps)."""
    points = {r["step"]: r[key] for r in rows if r.get("split") == split and key in r}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """One figure, one panel per metric (accuracy, loss, sparsity), one line per run; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(d, read_metrics(d)) for d in run_dirs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (label, candidates) in zip(axes, PANELS):
        for run_dir, rows in runs:
            for split, key in candidates:
                steps, values = curve(rows, split, key)
                if steps:
                    ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=run_dir.name)
                    break
        ax.set_xlabel("step (meta-step or iteration)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
