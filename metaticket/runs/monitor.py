"""Run monitoring: TensorBoard scalars, histograms and images, ``metrics.jsonl`` and progress bars with ETA.

Tags (``split/name``): ``train/*`` per logged step (loss, accuracy, learning rates, ms per step, throughput,
fraction re-randomized), ``val/*`` or ``test/*`` per evaluation (accuracy, CI, overall and per-layer sparsity,
``inner_change/<param>`` for meta-learners, ``val/best_<metric>`` the best so far), ``scores/<layer>`` histograms,
``mask/<layer>`` images, and the run's hyper-parameters with its final metrics in the HParams view.
Every scalar also goes to ``metrics.jsonl`` as one JSON object per (step, split).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from metaticket.core.supermask import supermask_layers
from metaticket.runs.checkpoint import open_append

MAX_IMAGE_SIDE = 512  # mask images larger than this a side are shrunk (block averages), not cropped


class Monitor:
    """Writes every scalar to TensorBoard (``run_dir``) and as one JSON line to ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir: str | Path, quiet: bool = False, tensorboard: bool = True, write: bool = True) -> None:
        """``write=False`` (the non-main processes of a distributed run): no files, no output, logging is a no-op."""
        self.run_dir = Path(run_dir)
        self.write = write
        self.quiet = quiet or not write
        self._jsonl = None
        self._tb = None
        if not write:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open_append(self.run_dir / "metrics.jsonl")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir))

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        """Record ``values`` (numbers) under ``split/<name>`` at ``step``."""
        if self._jsonl is None:
            return
        clean = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self._jsonl.write(json.dumps({"step": step, "split": split, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)

    def hparams(self, params: dict[str, Any], metrics: Sequence[str]) -> None:
        """TensorBoard's HParams view of this run: ``params`` (name -> number, string or bool; others are left out)
        beside the latest values of the scalar tags ``metrics`` (e.g. ``val/best_acc``, ``test/acc``), so the runs
        of a sweep compare side by side in one table."""
        if self._tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        kept = {k: v for k, v in params.items() if isinstance(v, (bool, int, float, str))}
        for summary in hparams(kept, dict.fromkeys(metrics, 0.0)):  # only the metric names are used
            self._tb.file_writer.add_summary(summary)

    def histogram(self, step: int, tag: str, values: Tensor) -> None:
        """A TensorBoard histogram of ``values`` (any shape)."""
        if self._tb is not None:
            self._tb.add_histogram(tag, values.detach().float().flatten().cpu(), step)

    def image(self, step: int, tag: str, image: Tensor) -> None:
        """A grayscale TensorBoard image: ``image`` [H, W] with values in [0, 1]."""
        if self._tb is not None:
            self._tb.add_image(tag, image.detach().float().cpu().unsqueeze(0), step, dataformats="CHW")

    def progress(self, total: int, desc: str, initial: int = 0) -> tqdm:
        """A progress bar with ETA (to stderr; hidden with ``quiet``)."""
        return self.bar(total, desc, initial, self.quiet)

    @staticmethod
    def bar(total: int, desc: str, initial: int = 0, quiet: bool = False) -> tqdm:
        """A progress bar with ETA to stderr, for loops that have no run folder (e.g. a sweep's runs)."""
        return tqdm(total=total, initial=initial, desc=desc, disable=quiet, dynamic_ncols=True, file=sys.stderr,
                    smoothing=0.05)

    def print(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def mask_image(mask: Tensor) -> Tensor:
    """A [H, W] picture of a layer's 0/1 mask (white = kept).

    Linear [out, in]: the matrix. Conv [out, in, kh, kw]: a grid with one kh x kw tile per (output, input)
    channel pair, rows = output channels, separated by a gray line. A picture larger than ``MAX_IMAGE_SIDE`` pixels
    a side is shrunk by averaging blocks (a pixel's gray level is then the kept fraction of its block): the whole
    layer is shown, never a crop.
    """
    m = mask.detach().float().cpu()
    if m.dim() == 2:
        image = m
    else:
        out_c, in_c, kh, kw = m.shape
        tiles = torch.full((out_c, in_c, kh + 1, kw + 1), 0.5)
        tiles[:, :, :kh, :kw] = m
        image = tiles.permute(0, 2, 1, 3).reshape(out_c * (kh + 1), in_c * (kw + 1))
    h, w = image.shape
    if max(h, w) > MAX_IMAGE_SIDE:
        image = F.adaptive_avg_pool2d(image[None, None], (min(h, MAX_IMAGE_SIDE), min(w, MAX_IMAGE_SIDE)))[0, 0]
    return image


@torch.no_grad()
def log_masks(monitor: Monitor, model: nn.Module, step: int) -> None:
    """Histograms of every supermask layer's scores (``scores/<layer>``) and its mask as an image (``mask/<layer>``)."""
    for name, layer in supermask_layers(model):
        monitor.histogram(step, f"scores/{name}", layer.scores)
        monitor.image(step, f"mask/{name}", mask_image(layer.mask() != 0))
