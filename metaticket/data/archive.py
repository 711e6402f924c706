"""Read files from a folder, a zip or a (gzipped) tar in place, without extracting anything.

Members are read by name and never written out, so no archive can place files anywhere. On top of that an
archive whose members have absolute paths, ``..`` parts, or are symlinks / hard links is refused with an error
naming the member: the official data sets never contain such members, so one that does was tampered with.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from metaticket.errors import MetaticketError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# The largest member (or file in a data folder) read into memory: the official files' largest are CIFAR-10's
# python batches (31 MB); a member that says it inflates beyond this is refused before a byte is read (zip bomb).
MEMBER_LIMIT = 128 * 2**20


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def check_member(source: Path, name: str, link: bool) -> None:
    """Refuse a member that names a place outside the archive's folder or is a link."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("\\") or link:
        what = "is a link" if link else "escapes the archive's folder"
        raise MetaticketError(f"{source}: member {name!r} {what}; refusing to read this archive (the official "
                              f"files have no such members): download it again from the official source")


def check_size(source: Path, name: str, size: int) -> None:
    """Refuse a member whose (declared) size exceeds :data:`MEMBER_LIMIT` before it is read."""
    if size > MEMBER_LIMIT:
        raise MetaticketError(f"{source}: member {name!r} inflates to {size / 2**20:.0f} MiB, beyond the "
                              f"{MEMBER_LIMIT // 2**20} MiB a data file may have; refusing to read it (the official "
                              f"files are smaller): download the data set again")


def read_zip_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, source: Path) -> bytes:
    """The bytes of one zip member, size-checked first; a damaged member (CRC or deflate error) is one error
    naming the archive and the member."""
    check_size(source, info.filename, info.file_size)
    try:
        return z.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        raise MetaticketError(f"{source}: member {info.filename!r} is damaged ({type(e).__name__}: {e}); download "
                              f"the archive again") from None


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
                    check_size(source, rel, p.stat().st_size)
                    yield rel, p.read_bytes()
        elif source.name.endswith(".zip"):
            with zipfile.ZipFile(source) as z:
                for info in z.infolist():
                    check_member(source, info.filename, stat.S_ISLNK(info.external_attr >> 16))
                    if not info.is_dir() and keep(info.filename):
                        yield info.filename, read_zip_member(z, info, source)
        elif source.name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(source, "r:*") as t:
                for member in t:  # sequential: fast for .tar.gz
                    check_member(source, member.name, member.issym() or member.islnk())
                    if member.isfile() and keep(member.name):
                        check_size(source, member.name, member.size)
                        f = t.extractfile(member)
                        if f is not None:
                            yield member.name, f.read()
        else:
            raise MetaticketError(f"{source} is neither a folder nor a .zip/.tar/.tar.gz archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""  # tarfile's ReadError spans lines
        raise MetaticketError(f"{source} is damaged or truncated ({type(e).__name__}: {first}); "
                              f"download it again") from None
