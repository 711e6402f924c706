"""Atomic checkpoints: written to a temporary file and renamed, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import torch

from metaticket.errors import MetaticketError


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: a file needing arbitrary pickle code is refused."""
    path = Path(path)
    if not path.is_file():
        raise MetaticketError(f"checkpoint {path} does not exist; point at a run folder that has checkpoints/")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise MetaticketError(f"refusing to load {path}: it needs code execution to unpickle ({first[:160]}); "
                              f"only load checkpoints written by metaticket") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise MetaticketError(f"cannot read checkpoint {path} ({type(e).__name__}: {str(e)[:160]}); "
                              f"the file is truncated or not a checkpoint") from None


def rng_state() -> dict:
    """The global RNG states (torch, numpy, python) as tensors and numbers (loadable with ``weights_only``)."""
    version, words, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": list(words), "python_version": version,
             "python_gauss": gauss}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:  # numpy is optional; nothing in metaticket draws from it
        pass
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (or a bare torch RNG state, as older checkpoints hold)."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
