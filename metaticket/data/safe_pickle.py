"""Unpickling of dataset files (miniImageNet caches, CIFAR batches) restricted to numpy arrays and builtins.

These formats are pickles by design; a plain ``pickle.load`` would run any code a tampered file names.
Only the classes needed to rebuild numpy arrays and plain containers are allowed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from metaticket.errors import MetaticketError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"),
    ("builtins", "set"), ("builtins", "bytes"), ("builtins", "str"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


# numpy pickles an array as an empty placeholder (``_reconstruct(ndarray, (0,), b"b")``) filled by its state, whose
# size numpy checks against the bytes the file holds; a placeholder declaring more than this is refused, so a file
# of a few bytes cannot make the loader allocate gigabytes before anything is read
PLACEHOLDER_MAX_BYTES = 1 << 16


def _checked_reconstruct(real: Any) -> Any:
    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        import numpy as np

        try:
            dims = [int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,))]
            size = int(np.prod(dims, dtype=object)) * np.dtype(dtype).itemsize
        except (TypeError, ValueError, OverflowError) as e:
            raise pickle.UnpicklingError(f"an array placeholder with shape {shape!r} ({e})") from None
        if min(dims, default=0) < 0 or size > PLACEHOLDER_MAX_BYTES:
            raise pickle.UnpicklingError(f"an array placeholder declares {size} bytes (shape {tuple(dims)}), "
                                         f"which numpy never writes")
        return real(subtype, shape, dtype)

    return reconstruct


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            found = super().find_class(module, name)
            return _checked_reconstruct(found) if name == "_reconstruct" else found
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data file")


def looks_like_html(head: bytes) -> bool:
    text = head.lstrip().lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text[:512]


def load_pickle(path: Path, encoding: str = "latin1") -> Any:
    """Load a data pickle file with only numpy arrays and builtin containers allowed."""
    with open(path, "rb") as f:
        return _unpickle(f, str(path), encoding)


def loads_pickle(raw: bytes, name: str, encoding: str = "latin1") -> Any:
    """:func:`load_pickle` for bytes read from an archive member called ``name``."""
    return _unpickle(io.BytesIO(raw), name, encoding)


def _unpickle(f: BinaryIO, name: str, encoding: str) -> Any:
    head = f.read(1024)
    if looks_like_html(head):
        raise MetaticketError(f"{name} is an HTML page, not a pickle (a failed download, often a "
                              f"Google Drive warning page); download the file again")
    f.seek(0)
    try:
        return _Restricted(f, encoding=encoding).load()
    except pickle.UnpicklingError as e:
        raise MetaticketError(f"refusing to load {name}: {e}; only plain numpy data files are read") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise MetaticketError(f"{name} is not a readable data pickle ({type(e).__name__}: {e}); "
                              f"download it again") from None


def uint8_array(value: Any, name: str, what: str, dims: int) -> Any:
    """``value`` if it is a ``dims``-dimensional uint8 numpy array (what a data pickle must hold), else a one-line
    error naming the file ``name`` and the field ``what``."""
    shape, dtype = getattr(value, "shape", None), str(getattr(value, "dtype", ""))
    if type(value).__name__ != "ndarray" or dtype != "uint8" or len(shape) != dims:
        got = f"{type(value).__name__} {dtype} {tuple(shape) if shape is not None else ''}".strip()
        raise MetaticketError(f"{name}: {what} is {got}, expected a {dims}-D uint8 array; the file is damaged, "
                              f"download it again")
    return value


def int_list(value: Any, name: str, what: str, below: int) -> list[int]:
    """``value`` as a list of ints in ``[0, below)``, else a one-line error naming the file and the field."""
    try:
        items = [int(v) for v in value]
        ok = all(not isinstance(v, (bool, float, str, bytes)) for v in value)
    except (TypeError, ValueError, OverflowError):
        items, ok = [], False
    if not ok or any(not 0 <= v < below for v in items):
        raise MetaticketError(f"{name}: {what} must be whole numbers in [0, {below}); the file is damaged, "
                              f"download it again")
    return items
