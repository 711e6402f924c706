"""Read files from a folder, a zip or a (gzipped) tar in place, without extracting anything.

Members are read by name and never written out, so no archive can place files anywhere. On top of that an
archive whose members have absolute paths, ``..`` parts, or are symlinks / hard links is refused with an error
naming the member: the official data sets never contain such members, so one that does was tampered with.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from metaticket.errors import MetaticketError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def check_member(source: Path, name: str, link: bool) -> None:
    """Refuse a member that names a place outside the archive's folder or is a link."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("\\") or link:
        what = "is a link" if link else "escapes the archive's folder"
        raise MetaticketError(f"{source}: member {name!r} {what}; refusing to read this archive (the official "
                              f"files have no such members): download it again from the official source")


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
                    check_member(source, info.filename, stat.S_ISLNK(info.external_attr >> 16))
                    if not info.is_dir() and keep(info.filename):
                        yield info.filename, z.read(info)
        elif source.name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(source, "r:*") as t:
                for member in t:  # sequential: fast for .tar.gz
                    check_member(source, member.name, member.issym() or member.islnk())
                    if member.isfile() and keep(member.name):
                        f = t.extractfile(member)
                        if f is not None:
                            yield member.name, f.read()
        else:
            raise MetaticketError(f"{source} is neither a folder nor a .zip/.tar/.tar.gz archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise MetaticketError(f"{source} is damaged or truncated ({type(e).__name__}: {e}); "
                              f"download it again") from None
