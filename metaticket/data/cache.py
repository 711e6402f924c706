"""Decoded datasets are cached as tensor files, keyed by a fingerprint of their sources."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch


def fingerprint(sources: list[Path]) -> str:
    """SHA-256 over archive bytes, or over (relative path, size) of every file in a folder."""
    h = hashlib.sha256()
    for src in sources:
        if src.is_file():
            with open(src, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        else:
            for p in sorted(src.rglob("*")):
                if p.is_file():
                    h.update(f"{p.relative_to(src)}:{p.stat().st_size}".encode())
    return h.hexdigest()


def cached(path: Path, build: Callable[[], dict]) -> dict:
    """Load ``path`` (a dict of tensors and lists) or build it and write it atomically."""
    if path.exists():
        return torch.load(path, weights_only=True)
    blob = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # a crash never leaves a half-written cache
    return blob
