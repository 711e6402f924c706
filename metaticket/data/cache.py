"""Decoded datasets are cached as tensor files, keyed by a fingerprint of their sources."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from metaticket.errors import READ_ONLY_ERRNOS, MetaticketError


def fingerprint(sources: list[Path]) -> str:
    """SHA-256 over the bytes of every source: an archive, or every file in a folder (with its relative path), so
    a changed image gives another key even when names and sizes stay the same."""
    h = hashlib.sha256()
    for src in sources:
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for p in files:
            if p is not src:
                h.update(f"{p.relative_to(src).as_posix()}\0".encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


Valid = Callable[[dict], bool]


def images_of(*keys: str, dims: tuple[int, ...] = (4, 5), side: int | None = None) -> Valid:
    """A cache check: each of ``keys`` is a uint8 image tensor of one of ``dims`` dimensions (with square images of
    ``side`` pixels when given)."""
    def valid(blob: dict) -> bool:
        for k in keys:
            t = blob[k]
            if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() in dims):
                return False
            if side is not None and tuple(t.shape[-2:]) != (side, side):
                return False
        return True
    return valid


def _load(path: Path, keys: tuple[str, ...], valid: Valid | None = None) -> dict | None:
    """The cache file's dict, or None when it is truncated, not a tensor file, lacks ``keys`` or fails ``valid``
    (wrong shapes or dtypes: then rebuilt)."""
    try:
        blob = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 (any unreadable file is rebuilt from the sources, which are the truth)
        return None
    if not (isinstance(blob, dict) and all(k in blob for k in keys)):
        return None
    try:
        return blob if valid is None or valid(blob) else None
    except Exception:  # noqa: BLE001 (a check that cannot even look at the contents: the file is foreign)
        return None


def cached(path: Path, build: Callable[[], dict], keys: tuple[str, ...] = (), valid: Valid | None = None) -> dict:
    """Load ``path`` (a dict of tensors and lists holding ``keys``, passing ``valid``) or build it and write it
    atomically. A cache file that does not load (truncated, foreign, an older layout, tensors of the wrong shape)
    is built again and replaced, with a note; where the cache folder cannot be written (read-only), the data set
    is used as decoded, with a note."""
    if path.exists():
        blob = _load(path, keys, valid)
        if blob is not None:
            return blob
        print(f"note: the cache file {path} is damaged or foreign; decoding the data set again", file=sys.stderr)
    blob = build()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)  # a crash never leaves a half-written cache
    except (OSError, RuntimeError) as e:
        if tmp.parent.is_dir():
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        if getattr(e, "errno", None) in READ_ONLY_ERRNOS:  # a read-only cache folder
            print(f"note: cannot write the decoded data set to {path} (read-only); using it without caching (set "
                  f"METATICKET_CACHE to a writable folder to decode once)", file=sys.stderr)
            return blob
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:120]
        raise MetaticketError(f"cannot write the decoded data set to {path} ({reason}); set METATICKET_CACHE to a "
                              f"writable folder with space") from None
    return blob


def decode_once(sources: list[Path] | None, missing: str, cache_file: Callable[[str], Path],
                build: Callable[[], dict], keys: tuple[str, ...], valid: Valid | None = None) -> dict:
    """The decoded data set of ``sources``: from the cache file ``cache_file(key)`` (``key`` the first 16 hex digits
    of their fingerprint), else decoded by ``build`` once and cached. ``sources`` None: the one-line error
    ``missing`` (it names what was looked for and where)."""
    if sources is None:
        raise MetaticketError(missing)
    return cached(cache_file(fingerprint(sources)[:16]), build, keys=keys, valid=valid)
