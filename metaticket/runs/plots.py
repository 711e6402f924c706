"""PNG curves from runs' ``metrics.jsonl`` files, for comparing runs without TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from metaticket.errors import MetaticketError

# (axis label, candidate (split, key, what) triples) per panel: the first pair a run has wins (meta-learning runs
# validate, supervised runs test); the legend says which one a line is
PANELS = [
    ("accuracy (%) or MSE (regression), band: 95% CI", [("val", "acc", "validation"), ("test", "top1", "test"),
                                                          ("val", "mse", "validation MSE")]),
    ("training loss", [("train", "loss", "train")]),
    ("sparsity (fraction pruned)", [("val", "sparsity", "masks"), ("test", "sparsity", "masks")]),
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


IMAGE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def check_output(out: Path) -> None:
    """``-o``: a file path with an image suffix matplotlib writes, not a folder (one-line errors)."""
    if out.is_dir():
        raise MetaticketError(f"-o {out} is a folder; name the image file to write, e.g. {out / 'curves.png'}")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise MetaticketError(f"-o {out}: {out.suffix or 'no suffix'} is not an image format plot writes; end the "
                              f"name in one of {', '.join(IMAGE_SUFFIXES)}")


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """One figure, one panel per metric (accuracy, loss, sparsity), one line per run; returns ``out``."""
    check_output(out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(d, read_metrics(d)) for d in run_dirs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (label, candidates) in zip(axes, PANELS):
        dense = []
        for run_dir, rows in runs:
            for split, key, what in candidates:
                steps, values = curve(rows, split, key)
                if not steps:
                    continue
                if key == "sparsity" and not any(values):  # a dense run has no mask: no flat line at 0
                    dense.append(run_dir.name)
                    break
                line, = ax.plot(steps, values, marker="." if len(steps) < 30 else None,
                                label=f"{run_dir.name} ({what})")
                ci_steps, ci = curve(rows, split, "ci95")
                if key in ("acc", "top1", "mse") and ci_steps == steps:  # the 95% CI logged with the accuracy
                    ax.fill_between(steps, [v - c for v, c in zip(values, ci)], [v + c for v, c in zip(values, ci)],
                                    color=line.get_color(), alpha=0.2, linewidth=0)
                break
        if dense:
            ax.text(0.02, 0.02, "no mask: " + ", ".join(dense), transform=ax.transAxes, fontsize=7)
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
