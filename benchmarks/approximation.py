"""IteRand's approximation experiment (Chijiwa et al. 2021, Theorem 4.1): does re-sampling the pruned weights
lower the width a random source network needs to contain a good approximation of a target network?

- Target ``f``: a ReLU MLP ``d -> h -> 1`` (no biases) with Gaussian weights scaled to ``||F_i||_Frob = 1``.
- Source ``g``: twice as deep, ``d -> n -> n -> n -> 1``, weights uniform in [-1, 1], ReLU between layers.
- Masks by edge-popup on inputs uniform in [-1, 1]^d, mean squared error to ``f``, scores trained with Adam;
  top-k per layer keeping about ``--kept-fan-in`` weights per neuron, so that the output scale of U[-1, 1]
  weights does not grow with the width (with a fixed fraction kept, e.g. half, the pruned network's output
  grows like ``n ** 1.5`` and edge-popup's error grew with the width in our trials).
- ``R`` re-samples: the training steps are split into ``R`` equal phases, with one cosine learning-rate decay
  over all of them (restarting the decay in each phase made R = 4 worse at widths 64 and 256 in a 2-seed trial).
  After each phase but the last a ``--rate`` fraction (default: all) of the currently pruned weights is re-drawn
  from U[-1, 1]; ``R = 1`` is plain edge-popup, and with rate 1 each weight sees up to ``R`` random values.
- Reported: the root mean squared error of the pruned source against ``f`` on held-out inputs, relative to the
  RMS of ``f`` (1.0 = no better than predicting 0), for each width ``n`` and ``R``: mean, std, median and best
  over seeds (one edge-popup run per seed; the target is the same for every width and R).

The source is built from metaticket's supermask layers with Kaiming-uniform weights (bound ``b_l``) and the
output multiplied by ``prod 1 / b_l``: ReLU networks are positively homogeneous, so this is exactly the
U[-1, 1] network, and :func:`metaticket.core.supermask.rerandomize` re-draws from the right distribution.

    python benchmarks/approximation.py --widths 16 32 64 128 256 --resamples 1 2 4 8 --seeds 8 --steps 1000

Writes ``results/approximation.json`` and ``results/approximation.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaticket.core.supermask import SupermaskLinear, fan_in, rerandomize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def target_network(d: int, hidden: int, generator: torch.Generator) -> list[Tensor]:
    """Weights [h, d] and [1, h], each with Frobenius norm 1."""
    weights = [torch.randn(hidden, d, generator=generator), torch.randn(1, hidden, generator=generator)]
    return [w / w.norm() for w in weights]


def target(weights: list[Tensor], x: Tensor) -> Tensor:
    """x: [N, d] -> [N, 1]."""
    return torch.relu(x @ weights[0].T) @ weights[1].T


class Source(nn.Module):
    """``d -> n -> n -> n -> 1`` ReLU supermask MLP whose weights are U[-1, 1] (see the module docstring)."""

    def __init__(self, d: int, width: int, kept_fan_in: float, generator: torch.Generator) -> None:
        super().__init__()
        dims = [d, width, width, width, 1]
        # per layer, keep about ``kept_fan_in`` weights per neuron: the output scale then does not grow with n
        self.layers = nn.ModuleList(
            SupermaskLinear(i, o, bias=False, mask="topk", sparsity=max(0.0, 1.0 - kept_fan_in / i),
                            init="kaiming_uniform", generator=generator) for i, o in zip(dims[:-1], dims[1:]))
        # Kaiming-uniform bound of a layer: sqrt(6 / fan_in); U[-1, 1] = U[-b, b] / b
        self.scale = math.prod(1.0 / math.sqrt(6.0 / fan_in(layer.weight.shape)) for layer in self.layers)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x * self.scale


def run_one(d: int, hidden: int, width: int, resamples: int, steps: int, kept_fan_in: float, lr: float, batch: int,
            seed: int, rate: float = 1.0) -> dict[str, float]:
    """Train one source's scores with ``resamples`` phases; return the relative test RMSE."""
    g_target = torch.Generator().manual_seed(1000 + seed)  # the same target for every width and R
    f = target_network(d, hidden, g_target)
    x_test = torch.rand(4096, d, generator=g_target) * 2 - 1
    y_test = target(f, x_test)
    g = torch.Generator().manual_seed(seed)
    source = Source(d, width, kept_fan_in, g)
    # Adam steps relative to each layer's score scale (Kaiming-uniform bound), one cosine decay over all steps
    groups = [{"params": [layer.scores], "lr": lr * math.sqrt(6.0 / fan_in(layer.weight.shape))}
              for layer in source.layers]
    optimizer = torch.optim.Adam(groups)
    base = [group["lr"] for group in groups]
    phase = math.ceil(steps / resamples)
    for step in range(1, steps + 1):
        t = (step - 1) / steps
        for group, lr0 in zip(optimizer.param_groups, base):
            group["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * t))
        x = torch.rand(batch, d, generator=g) * 2 - 1
        loss = (source(x) - target(f, x)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % phase == 0 and step < steps:
            rerandomize(source, rate, g)
    with torch.no_grad():
        rmse = float((source(x_test) - y_test).pow(2).mean().sqrt())
        rms = float(y_test.pow(2).mean().sqrt())
    return {"rmse": rmse, "relative_rmse": rmse / rms}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "relative_rmse_median", "median over seeds"),
                           (axes[1], "relative_rmse_min", "best seed")):
        for r in sorted({row["resamples"] for row in rows}):
            pts = sorted((row["width"], row[key]) for row in rows if row["resamples"] == r)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"R = {r}" + (" (edge-popup)" if r == 1 else ""))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("source width n")
        ax.set_title(f"{title}")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("relative RMSE to the target (held-out x)")
    axes[0].legend()
    fig.suptitle("Pruned random source vs target network, R re-samples of the pruned weights")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--resamples", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--d", type=int, default=4, help="input dimension")
    parser.add_argument("--hidden", type=int, default=8, help="target hidden width")
    parser.add_argument("--kept-fan-in", type=float, default=8.0,
                        help="weights kept per neuron: layer sparsity 1 - kept / fan_in (0 if fan_in is smaller)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam step relative to each layer's score scale")
    parser.add_argument("--rate", type=float, default=1.0, help="fraction of the pruned weights re-drawn each time")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--name", default="approximation")
    args = parser.parse_args(argv)
    if min(args.resamples) < 1:
        parser.error("--resamples are counts of random values per weight, at least 1")
    rows = []
    started = time.perf_counter()
    for width in args.widths:
        for r in args.resamples:
            runs = [run_one(args.d, args.hidden, width, r, args.steps, args.kept_fan_in, args.lr, args.batch, seed,
                            args.rate) for seed in range(args.seeds)]
            rel = [x["relative_rmse"] for x in runs]
            rows.append({"width": width, "resamples": r, "relative_rmse": statistics.mean(rel),
                         "relative_rmse_std": statistics.stdev(rel) if len(rel) > 1 else 0.0,
                         "relative_rmse_median": statistics.median(rel), "relative_rmse_min": min(rel),
                         "per_seed": rel})
            print(f"width {width:4d}  R {r}  relative RMSE mean {rows[-1]['relative_rmse']:.4f} "
                  f"(std {rows[-1]['relative_rmse_std']:.4f}), median {rows[-1]['relative_rmse_median']:.4f}, "
                  f"best {min(rel):.4f} over {args.seeds} seeds", flush=True)
    out = {"settings": {k: v for k, v in vars(args).items() if k not in ("results", "name")},
           "minutes": (time.perf_counter() - started) / 60, "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, args.results / f"{args.name}.png")
    return out


if __name__ == "__main__":
    main()
