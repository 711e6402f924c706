"""Atomic checkpoints: written to a temporary file and renamed, loaded with ``weights_only=True``."""

from __future__ import annotations

import json
import os
import pickle
import random
from collections.abc import Iterator
from contextlib import contextmanager
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
    except (OSError, RuntimeError) as e:  # a full disk shows as OSError, or RuntimeError from torch's zip writer
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:120]
        raise MetaticketError(f"cannot write {path} ({reason}); {kept}: free disk space (or fix the folder's "
                              f"permissions) and continue with --resume") from None
    finally:
        if tmp.exists():
            tmp.unlink()


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file or the new one,
    never a torn one. The temporary file is created new (never through a link planted at its name), and the rename
    replaces a link at ``path`` instead of writing into its target."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def open_append(path: str | Path):  # noqa: ANN201 (a text file object)
    """``path`` opened for appending lines (line-buffered), the one way run files are appended to. A link at
    ``path`` is refused (in a shared folder someone else's link would make us write into its target). A last line
    without its newline (a kill or a full disk mid-write) is cut off first: appended to as it is, the next record
    would be glued to it and both lost."""
    path = Path(path)
    if path.is_symlink():
        raise MetaticketError(f"{path} is a symbolic link; run files are written only as plain files (remove the "
                              f"link, or use another run.out_dir)")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | _NOFOLLOW, 0o644)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        data = os.pread(fd, size, 0)
        os.ftruncate(fd, data.rfind(b"\n") + 1)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or torn (e.g. written by a version that crashed
    mid-write): the caller rebuilds it."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@contextmanager
def restoring(path: str | Path) -> Iterator[None]:
    """Around loading a checkpoint's states into a run: an error there (another model, a state of the wrong shape)
    becomes one line naming the file."""
    try:
        yield
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise MetaticketError(f"cannot resume from {path}: it does not fit this run ({type(e).__name__}: {first}); "
                              f"start a new run") from None


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
    except Exception as e:  # noqa: BLE001 (torch's unpickler raises many types on a damaged file: IndexError, ...)
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise MetaticketError(f"cannot read checkpoint {path} ({type(e).__name__}: {first}); "
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


# What each kind of run keeps in checkpoints/last.pt (see runs/meta_train.py and runs/supervised.py).
CHECKPOINT_KEYS = {"meta": ("learner", "sampler", "rng", "best"),
                   "train": ("model", "optimizer", "scheduler", "rerand", "rng", "iteration", "history")}


def check_checkpoint(state: Any, task: str, path: str | Path) -> dict:
    """``state`` if it is a checkpoint of a ``task`` run ("meta" or "train") whose generator states have the size
    this torch uses; otherwise a one-line error naming what it is instead."""
    if isinstance(state, dict) and state.get("format") == "metaticket-ticket":
        raise MetaticketError(f"{path} is a ticket, not a checkpoint; load it with metaticket.load_ticket, or point "
                              f"at a run folder's checkpoints/last.pt")
    missing = [k for k in CHECKPOINT_KEYS[task] if not isinstance(state, dict) or k not in state]
    if missing:
        other = next((t for t, keys in CHECKPOINT_KEYS.items()
                      if isinstance(state, dict) and all(k in state for k in keys)), None)
        what = f"a checkpoint of a {other} run" if other else f"not a {task} checkpoint (no {', '.join(missing)})"
        raise MetaticketError(f"{path} is {what}; resume a folder that {'meta-train' if task == 'meta' else 'train'} "
                              f"wrote")
    size = torch.Generator().get_state().numel()
    sampler = state.get("sampler") if task == "meta" else state.get("rerand")
    generators = [("rng.torch", state["rng"].get("torch") if isinstance(state["rng"], dict) else state["rng"]),
                  ("sampler" if task == "meta" else "rerand",
                   sampler.get("generator") if isinstance(sampler, dict) else None)]
    for name, g in generators:
        if not isinstance(g, torch.Tensor) or g.dtype != torch.uint8 or g.numel() != size:
            raise MetaticketError(f"{path}: its {name} generator state is damaged (expected {size} bytes); resume "
                                  f"from an intact checkpoint or start a new run")
    return state
