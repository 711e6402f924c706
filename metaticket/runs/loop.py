"""The training loop of both run kinds (meta-training and supervised training): steps, the log window, the NaN
guard, timing, evaluations and atomic checkpoints with exact resume, and the callbacks a user's code hooks into.

What a run kind supplies is what differs between them: its batches, one update (``step``), what is due after a
step (:class:`Due`), its log line, its evaluation and the state its checkpoints keep. The loop owns the rest, in
this order after every step: read the step outputs from the device when something is due (the one host sync
between log lines), log, run the kind's ``after_log`` (e.g. an epoch's IteRand), evaluate, checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metaticket.errors import MetaticketError
from metaticket.runs.checkpoint import save_atomic
from metaticket.runs.monitor import Monitor


def last_good(path: Path) -> str:
    """How a non-finite-loss error names what is left: the checkpoint at ``path``, or that there is none yet."""
    return f"the last good checkpoint is {path}" if path.is_file() else \
        "no checkpoint was written before it (the run diverged at once)"


@dataclass(frozen=True)
class Callbacks:
    """Functions the training loop calls on the main process (rank 0), for code that drives a run from Python.

    - ``on_step(step, outputs)``: after every step, with its outputs (loss, accuracy...; on a GPU still device
      tensors: reading them waits for the device);
    - ``on_log(step, values)``: the train averages of each log line;
    - ``on_validate(step, values)``: each validation (meta) or test evaluation (supervised) with its scores;
    - ``on_checkpoint(step, path)``: after each checkpoint write;
    - ``on_end(summary)``: once, with the run's summary (what ``train_summary.json`` holds).
    """

    on_step: Callable[[int, dict], object] | None = None
    on_log: Callable[[int, dict], object] | None = None
    on_validate: Callable[[int, dict], object] | None = None
    on_checkpoint: Callable[[int, Path], object] | None = None
    on_end: Callable[[dict], object] | None = None


@dataclass(frozen=True)
class Due:
    """What a step is followed by: a log line, an evaluation, a checkpoint."""

    log: bool = False
    evaluate: bool = False
    checkpoint: bool = False


class Window:
    """Sums of the step outputs since the last log line and how many steps they cover. A step's outputs stay on
    the device (summed in float64) until :meth:`read` folds them into the sums as floats."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self._pending: dict[str, Tensor | float] = {}

    def add(self, outputs: dict[str, Tensor | float]) -> None:
        """Add one step's outputs (or a value that belongs to the window, like an epoch's re-drawn fraction)."""
        for k, v in outputs.items():
            v = v.detach().to(torch.float64) if isinstance(v, Tensor) else v
            self._pending[k] = self._pending.get(k, 0.0) + v

    def read(self) -> dict[str, float]:
        """Fold the pending outputs into the sums; returns what was pending, as floats."""
        values = {k: float(v) for k, v in self._pending.items()}
        self._pending = {}
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        return values

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.n = {}, 0

    def state_dict(self) -> tuple[dict[str, float], int]:
        """What a checkpoint keeps (after :meth:`read`), so a resumed run logs the averages an uninterrupted one
        does."""
        return dict(self.sums), self.n

    def load_state_dict(self, state: tuple[dict[str, float], int] | None) -> None:
        self.sums, self.n = (dict(state[0]), int(state[1])) if state else ({}, 0)


class Loop:
    """Runs ``total`` steps from ``start`` (the steps a resumed run has done). ``unit`` names a step in messages
    ("step", "iteration"); ``not_finite(loss, when)`` words the error when a step output is not finite;
    ``callbacks`` is one :class:`Callbacks` or a list of them (each hook called in list order)."""

    def __init__(self, *, total: int, start: int, unit: str, monitor: Monitor, title: str, main: bool = True,
                 callbacks: Callbacks | Sequence[Callbacks] | None = None,
                 not_finite: Callable[[float, str], str]) -> None:
        self.total, self.step, self.unit = total, start, unit
        self.monitor, self.title, self.main = monitor, title, main
        self.callbacks = [callbacks] if isinstance(callbacks, Callbacks) else list(callbacks or [])
        self.not_finite = not_finite
        self.window = Window()
        self.busy, self.timed = 0.0, 0  # seconds in timed steps (not the first one: warm-up), and their number
        self._first_pending = start + 1

    # ------------------------------------------------------------------------------------------- pieces
    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback that has it, in order, on the main process only."""
        if not self.main:
            return
        for callbacks in self.callbacks:
            fn = getattr(callbacks, hook)
            if fn is not None:
                fn(*args)

    def read(self) -> None:
        """Read the pending step outputs (waiting for the device: on a GPU the queued steps finish here, and that
        time counts as step time). A non-finite output stops the run before anything of these steps is saved."""
        t0 = time.perf_counter()
        values = self.window.read()
        self.busy += (time.perf_counter() - t0) if self.timed else 0.0
        first, self._first_pending = self._first_pending, self.step + 1
        if not all(v == v and abs(v) != float("inf") for v in values.values()):
            when = f"at {self.unit} {first}" if first == self.step else \
                f"between {self.unit}s {first} and {self.step}"
            raise MetaticketError(self.not_finite(values.get("loss", float("nan")), when))

    def ms_per_step(self) -> float:
        return 1000.0 * self.busy / max(self.timed, 1)

    def save(self, state: dict[str, Any], path: Path) -> None:
        """Write ``state`` plus the log window atomically to ``path`` (main process only), then ``on_checkpoint``."""
        self.read()
        if not self.main:
            return
        save_atomic({**state, "window": self.window.state_dict()}, path)
        self.call("on_checkpoint", self.step, path)

    def resume(self, state: dict[str, Any]) -> None:
        """Restore the log window a checkpoint kept (checkpoints written before it was kept start an empty one)."""
        self.window.load_state_dict(state.get("window"))

    # ------------------------------------------------------------------------------------------- the loop
    def run(self, batches: Iterable, step: Callable[[Any], dict[str, Tensor | float]], due: Callable[[int], Due],
            log: Callable[[Window], tuple[dict[str, float], dict[str, str]]], evaluate: Callable[[int], dict],
            checkpoint: Callable[[int], None], after_log: Callable[[int], None] | None = None,
            after_evaluate: Callable[[int, dict], None] | None = None) -> None:
        """Step through ``batches`` until ``total``: ``step(batch)`` is one update and returns its outputs (0-d
        tensors or floats, averaged over each log window); after it, ``due(step)`` says what follows. ``log``
        turns the window into the log line's values and the progress bar's postfix; ``evaluate(step)`` returns
        the scores it logged, ``after_evaluate(step, scores)`` acts on them after ``on_validate`` (e.g. keeps the
        best checkpoint); ``checkpoint(step)`` writes (through :meth:`save`)."""
        bar = self.monitor.progress(self.total, self.title, initial=self.step)
        source = iter(batches)
        try:
            while self.step < self.total:
                batch = next(source)
                t0 = time.perf_counter()
                outputs = step(batch)
                dt = time.perf_counter() - t0
                self.step += 1
                if self.step > 1:  # the first step pays one-off warm-up costs
                    self.busy += dt
                    self.timed += 1
                self.window.add(outputs)
                self.window.n += 1
                bar.update(1)
                self.call("on_step", self.step, outputs)
                what = due(self.step)
                if what.log or what.evaluate or what.checkpoint:
                    self.read()
                if what.log:
                    values, postfix = log(self.window)
                    self.monitor.log(self.step, "train", values)
                    self.call("on_log", self.step, values)
                    bar.set_postfix(**postfix)
                    self.window.reset()
                if after_log is not None:
                    after_log(self.step)
                if what.evaluate:
                    values = evaluate(self.step)
                    self.call("on_validate", self.step, values)
                    if after_evaluate is not None:
                        after_evaluate(self.step, values)
                if what.checkpoint:
                    checkpoint(self.step)
        finally:
            bar.close()
            if hasattr(source, "close"):  # a generator of batches (its data loader's workers end with it)
                source.close()

    def end(self, summary: dict) -> dict:
        """The run is over: ``on_end(summary)``; returns ``summary``."""
        self.call("on_end", summary)
        return summary
