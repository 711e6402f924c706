"""Tables and plots over a sweep's runs (seeds, widths, sparsities, methods); pure functions of result rows.

A row is one run's test result (``accuracy`` for meta-test, ``top1`` for supervised eval) plus its ``seed`` and
the swept values ``method``, ``width`` and ``target_sparsity``.
"""

from __future__ import annotations

import math
from pathlib import Path


def score(row: dict) -> float:
    return float(row["accuracy"] if "accuracy" in row else row["top1"])


def _mean_ci(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, 1.96 * std / math.sqrt(n)


def seed_table(rows: list[dict]) -> dict:
    """Per-seed accuracy +- CI and the mean over seeds +- 1.96 std / sqrt(seeds) (markdown and numbers)."""
    n = len(rows)
    mean, ci = _mean_ci([score(r) for r in rows])
    first = rows[0]
    what = (f"{first['ways']}-way {first['shots']}-shot, {first['tasks']} test tasks per seed" if "ways" in first
            else f"{first.get('images', '?')} test images per seed")
    title = f"{first['method']} / {first['model']} / {first['dataset']} {what}"
    lines = [f"### {title}", "", "| seed | accuracy (%) | 95% CI (one run) | sparsity |", "|---|---|---|---|"]
    lines += [f"| {r['seed']} | {score(r):.2f} | +- {r['ci95']:.2f} | {r['sparsity']:.3f} |" for r in rows]
    lines.append(f"| mean over {n} seeds | **{mean:.2f}** | +- {ci:.2f} (over seeds) | |")
    return {"title": title, "seeds": rows, "mean": round(mean, 3), "ci95_over_seeds": round(ci, 3),
            "markdown": "\n".join(lines) + "\n"}


def _mean_or_none(values: list) -> float | None:
    known = [float(v) for v in values if v is not None]
    return round(sum(known) / len(known), 2) if known else None


def grid_table(rows: list[dict]) -> dict:
    """One line per (method, width, target sparsity): mean accuracy over seeds and its 95% CI.

    With one seed the CI is the run's own (over test tasks or binomial over test images).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["width"], r["target_sparsity"]), []).append(r)
    first = rows[0]
    title = f"{first['model']} / {first['dataset']}: accuracy by method, width and sparsity"
    lines = [f"### {title}", "", "| method | width | sparsity (target) | sparsity (measured) | seeds | accuracy (%) "
             "| 95% CI | params kept | ms/iter | train min |", "|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for (method, width, target), runs in groups.items():
        mean, ci = _mean_ci([score(r) for r in runs])
        if len(runs) == 1:
            ci = float(runs[0]["ci95"])
        measured = sum(r["sparsity"] for r in runs) / len(runs)
        kept = runs[0].get("params_kept")
        ms = _mean_or_none([r.get("ms_per_iter", r.get("ms_per_step")) for r in runs])
        minutes = _mean_or_none([r.get("train_minutes") for r in runs])
        summary.append({"method": method, "width": width, "target_sparsity": target, "sparsity": round(measured, 4),
                        "seeds": [r["seed"] for r in runs], "accuracy": round(mean, 3), "ci95": round(ci, 3),
                        "params_kept": kept, "ms_per_iter": ms, "train_minutes": minutes})
        lines.append(f"| {method} | {width:g} | {target:g} | {measured:.3f} | {len(runs)} | {mean:.2f} | "
                     f"+- {ci:.2f} | {'' if kept is None else kept} | {'' if ms is None else f'{ms:.0f}'} | "
                     f"{'' if minutes is None else f'{minutes:.1f}'} |")
    return {"title": title, "groups": summary, "runs": rows, "markdown": "\n".join(lines) + "\n"}


def plot_grid(table: dict, path: Path) -> None:
    """Accuracy vs width (or vs sparsity when only sparsity varies), one line per method (and sparsity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = table["groups"]
    widths = sorted({g["width"] for g in groups})
    x_key, line_key = ("width", "target_sparsity") if len(widths) > 1 else ("target_sparsity", "width")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    lines: dict[tuple, list[dict]] = {}
    for g in groups:
        lines.setdefault((g["method"], g[line_key]), []).append(g)
    several = len({k[1] for k in lines}) > 1
    for (method, other), pts in sorted(lines.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        pts = sorted(pts, key=lambda p: p[x_key])
        label = f"{method} ({line_key.replace('target_', '')} {other:g})" if several else method
        ax.errorbar([p[x_key] for p in pts], [p["accuracy"] for p in pts], yerr=[p["ci95"] for p in pts],
                    marker="o", capsize=3, label=label)
    if x_key == "width":
        ax.set_xscale("log", base=2)
    ax.set_xlabel("width factor" if x_key == "width" else "sparsity (fraction pruned)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(table["title"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
