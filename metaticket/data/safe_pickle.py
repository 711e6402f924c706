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


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
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
