"""Run monitoring: TensorBoard scalars, ``metrics.jsonl`` and progress bars with ETA."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


class Monitor:
    """Writes every scalar to TensorBoard (``run_dir``) and as one JSON line to ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir: str | Path, quiet: bool = False, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir))

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        """Record ``values`` (numbers) under ``split/<name>`` at ``step``."""
        clean = {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self._jsonl.write(json.dumps({"step": step, "split": split, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)

    def progress(self, total: int, desc: str, initial: int = 0) -> tqdm:
        """A progress bar with ETA (to stderr; hidden with ``quiet``)."""
        return tqdm(total=total, initial=initial, desc=desc, disable=self.quiet, dynamic_ncols=True,
                    file=sys.stderr, smoothing=0.05)

    def print(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
