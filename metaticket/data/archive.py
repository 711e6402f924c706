"""Read files from a folder, a zip or a (gzipped) tar in place, without extracting anything.

Reading members by name (never writing them out) means an archive with ``..`` paths or symlinks cannot
place files outside the cache: such members are simply skipped.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from metaticket.errors import MetaticketError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def _safe(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts


def iter_files(source: Path, keep: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(path relative to ``source``, content) of every regular file whose path passes ``keep``.

    ``source`` is a folder, ``.zip``, ``.tar``, ``.tar.gz`` or ``.tgz``; paths use ``/``.
    A damaged archive raises :class:`MetaticketError` naming the file.
    """
    try:
        if source.is_dir():
            for p in sorted(source.rglob("*")):
                rel = p.relative_to(source).as_posix()
                if p.is_file() and not p.is_symlink() and keep(rel):
                    yield rel, p.read_bytes()
        elif source.name.endswith(".zip"):
            with zipfile.ZipFile(source) as z:
                for info in z.infolist():
                    if not info.is_dir() and _safe(info.filename) and keep(info.filename):
                        yield info.filename, z.read(info)
        elif source.name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(source, "r:*") as t:
                for member in t:  # sequential: fast for .tar.gz
                    if member.isfile() and _safe(member.name) and keep(member.name):
                        f = t.extractfile(member)
                        if f is not None:
                            yield member.name, f.read()
        else:
            raise MetaticketError(f"{source} is neither a folder nor a .zip/.tar/.tar.gz archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise MetaticketError(f"{source} is damaged or truncated ({type(e).__name__}: {e}); "
                              f"download it again") from None
