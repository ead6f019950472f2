"""Archive readers: the members of a ``.nupkg`` or ``.zip`` and of a ``.tar.gz`` / ``.tgz``.

How it works. `open_reader` takes the format from the file name and confirms it by magic
bytes. A zip's central directory is counted before zipfile loads it, so a hostile entry
count costs no memory; a tar.gz is read through a stream that refuses to decompress past
the compression-ratio budget or to hand tarfile an oversized header block. A reader lists
the members as the archive describes them (`Entry`: the name as stored, its kind, its
declared sizes) and opens a member's bytes; it judges no names and writes nothing (that is
tentacle.packages.extraction). `reading` turns the readers' exceptions for damaged data
into `ArchiveError`.

This module does blocking file I/O by design: the agent calls it in a worker thread.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import lzma
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol

# ArchiveError is re-exported (`as`): readers raise it, callers catch it from here.
from tentacle.protocol.member_names import ArchiveError as ArchiveError
from tentacle.protocol.member_names import zip_member_kind, zip_member_name

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB
# Longest single read tarfile may make (pax and GNU long-name blocks are read whole).
_MAX_TAR_READ = _MIB

# Exceptions the readers raise for damaged data (gzip.BadGzipFile is an OSError).
READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    tarfile.TarError,
    NotImplementedError,
)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one archive may expand to.

    Members (and whole archives) expanding to at most ``ratio_grace_bytes`` are not
    ratio-checked: small files compress extremely well and cannot be a bomb.
    """

    max_total_bytes: int = 4 * _GIB
    max_entries: int = 100_000
    max_ratio: float = 200.0
    max_name_length: int = 1024
    ratio_grace_bytes: int = _MIB

    def __post_init__(self) -> None:
        """Refuse limits that could never be met."""
        for name in ("max_total_bytes", "max_entries", "max_ratio", "max_name_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name}: must be positive")
        if self.ratio_grace_bytes < 0:
            raise ValueError("Limits.ratio_grace_bytes: must not be negative")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Entry:
    """One member as the archive describes it."""

    name: str  # exactly as stored
    kind: str  # "file", "dir", or the rule a special member breaks ("symlink", ...)
    size: int  # declared uncompressed size
    packed: int | None  # declared compressed size; None where the format has none (tar)
    executable: bool
    handle: zipfile.ZipInfo | tarfile.TarInfo = field(repr=False)


class Reader(Protocol):
    """What validation and writing need from an archive format."""

    def entries(self) -> Iterator[Entry]:
        """Every member, in the archive's order."""

    def open(self, entry: Entry) -> IO[bytes]:
        """A stream of the member's bytes."""

    def close(self) -> None:
        """Release the archive."""


_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


class _ZipReader:
    """Members of a zip, from its central directory."""

    def __init__(self, file: BinaryIO, size: int, limits: Limits) -> None:
        _precount_zip(file, size, limits.max_entries)
        self._zip = zipfile.ZipFile(file)

    def entries(self) -> Iterator[Entry]:
        """Every member, in central-directory order."""
        for info in self._zip.infolist():
            yield _zip_entry(info)

    def open(self, entry: Entry) -> IO[bytes]:
        """A stream of the member's decompressed bytes."""
        assert isinstance(entry.handle, zipfile.ZipInfo)
        return self._zip.open(entry.handle)

    def close(self) -> None:
        """Release the zip."""
        self._zip.close()


def _zip_entry(info: zipfile.ZipInfo) -> Entry:
    # orig_filename is the name before zipfile cut it at a NUL: validate what was stored.
    name = zip_member_name(info.orig_filename, info.flag_bits)
    if info.flag_bits & 0x1:
        raise ArchiveError("encrypted", "encrypted members are not supported", member=name)
    if info.compress_type not in _ZIP_METHODS:
        raise ArchiveError("compression method", f"method {info.compress_type} is not supported", member=name)
    mode = info.external_attr >> 16
    kind = zip_member_kind(name, mode)
    if kind == "dir" and info.file_size:
        raise ArchiveError("directory with data", "a directory entry holds data", member=name)
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise ArchiveError("declared size", "a stored member's two declared sizes differ", member=name)
    executable = kind == "file" and bool(mode & 0o111)
    return Entry(name, kind, info.file_size, info.compress_size, executable, info)


_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CD_RECORD = struct.Struct("<4s6H3L5H2L")


def _precount_zip(file: BinaryIO, size: int, limit: int) -> None:
    """Refuse a central directory of more than ``limit`` records before zipfile loads it."""
    located = _central_directory(file, size)
    if located is None or located[1] // _CD_RECORD.size <= limit:
        return  # damaged (zipfile will say so) or too small to hold more records
    file.seek(located[0])
    count = consumed = 0
    while consumed < located[1]:
        record = file.read(_CD_RECORD.size)
        if len(record) < _CD_RECORD.size or not record.startswith(b"PK\x01\x02"):
            return  # let zipfile report the damage
        count += 1
        if count > limit:
            raise ArchiveError("entry count", f"more than {limit} entries")
        fields = _CD_RECORD.unpack(record)
        variable = fields[10] + fields[11] + fields[12]  # name, extra, comment
        file.seek(variable, io.SEEK_CUR)
        consumed += _CD_RECORD.size + variable


def _central_directory(file: BinaryIO, size: int) -> tuple[int, int] | None:
    """Start and length of the central directory, found as zipfile finds it."""
    tail_length = min(size, _EOCD.size + 0xFFFF)
    file.seek(size - tail_length)
    tail = file.read(tail_length)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or tail_length - at < _EOCD.size:
        return None
    end = size - tail_length + at
    length: int = _EOCD.unpack_from(tail, at)[5]
    before = end - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
    if before >= 0:
        file.seek(before)
        block = file.read(_ZIP64_EOCD.size + _ZIP64_LOCATOR.size)
        if block[_ZIP64_EOCD.size :].startswith(b"PK\x06\x07") and block.startswith(b"PK\x06\x06"):
            end, length = before, _ZIP64_EOCD.unpack_from(block)[8]
    return (end - length, length) if end >= length else None


_TAR_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "device file",
    tarfile.BLKTYPE: "device file",
    tarfile.FIFOTYPE: "fifo",
}


class _BoundedStream:
    """The decompressed tar stream, refusing to go past a byte budget.

    tarfile reads pax and long-name blocks whole and seeks over member data by
    decompressing it; this is where a gzip bomb or a huge header would cost us.
    """

    def __init__(self, inner: gzip.GzipFile, budget: int) -> None:
        self._inner = inner
        self._budget = budget

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes; refuses unbounded or oversized reads."""
        if size < 0 or size > _MAX_TAR_READ:
            raise ArchiveError("header size", f"a tar header block is larger than {_MAX_TAR_READ}")
        data = self._inner.read(size)
        self._check(self._inner.tell())
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        """Move within the budget (tarfile seeks forward over data it skips)."""
        if whence not in (io.SEEK_SET, io.SEEK_CUR):
            raise io.UnsupportedOperation("seek from end")
        target = offset if whence == io.SEEK_SET else self._inner.tell() + offset
        self._check(target)
        return self._inner.seek(target)

    def tell(self) -> int:
        """Position in the decompressed stream."""
        return self._inner.tell()

    def write(self, _data: bytes, /) -> int:
        """Read-only."""
        raise io.UnsupportedOperation("read-only")

    def close(self) -> None:
        """The inner stream is closed by its owner."""

    def _check(self, position: int) -> None:
        if position > self._budget:
            raise ArchiveError("compression ratio", f"the tar stream expands past {self._budget} bytes")


class _TarReader:
    """Members of a gzip-compressed tar, through a bounded stream."""

    def __init__(self, file: BinaryIO, size: int, limits: Limits) -> None:
        budget = max(limits.ratio_grace_bytes, int(limits.max_ratio * size))
        self._gzip = gzip.GzipFile(fileobj=file, mode="rb")
        # Closed in close(): the reader outlives this constructor by design.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=_BoundedStream(self._gzip, budget),
            mode="r:",
            encoding="utf-8",
            errors="surrogateescape",
        )

    def entries(self) -> Iterator[Entry]:
        """Every member, read lazily so validation can stop at the first bad one."""
        while (info := self._tar.next()) is not None:
            kind = _TAR_KINDS.get(info.type, "special member")
            if info.sparse is not None:
                kind = "special member"  # sparse files expand holes that the size hides
            size = info.size if kind == "file" else 0
            yield Entry(info.name, kind, size, None, bool(info.mode & 0o111), info)

    def open(self, entry: Entry) -> IO[bytes]:
        """A stream of the member's bytes, bounded by its declared size."""
        assert isinstance(entry.handle, tarfile.TarInfo)
        stream = self._tar.extractfile(entry.handle)
        if stream is None:
            raise ArchiveError("special member", "has no data stream", member=entry.name)
        return stream

    def close(self) -> None:
        """Release the tar and gzip objects."""
        self._tar.close()
        self._gzip.close()


@contextlib.contextmanager
def open_reader(archive: Path, kind: str, limits: Limits) -> Iterator[tuple[Reader, int]]:
    """The reader of `archive` (its magic bytes checked against `kind`) and the file's size."""
    try:
        file = archive.open("rb")
    except OSError as exc:
        raise ArchiveError("readable", f"cannot open {archive}: {exc.strerror}") from exc
    with file:
        size = os.fstat(file.fileno()).st_size
        _check_magic(file, kind)
        with reading("corrupt archive"):
            reader: Reader = (_TarReader if kind == "tar.gz" else _ZipReader)(file, size, limits)
        try:
            yield reader, size
        finally:
            reader.close()


def archive_kind(file_name: str) -> str:
    """The format a file name says: "nupkg", "zip" or "tar.gz"; ArchiveError for any other."""
    name = file_name.lower()
    for suffixes, kind in (((".nupkg",), "nupkg"), ((".zip",), "zip")):
        if name.endswith(suffixes):
            return kind
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    raise ArchiveError("format", f"{file_name}: not a .nupkg, .zip, .tar.gz or .tgz")


def _check_magic(file: BinaryIO, kind: str) -> None:
    head = file.read(4)
    file.seek(0)
    expected = (b"\x1f\x8b",) if kind == "tar.gz" else (b"PK\x03\x04", b"PK\x05\x06")
    if not head.startswith(expected):
        raise ArchiveError("format", f"the content is not {kind} (starts with {head!r})")


@contextlib.contextmanager
def reading(rule: str, member: str | None = None) -> Iterator[None]:
    """Turn the readers' exceptions for damaged data into ArchiveError."""
    try:
        yield
    except ArchiveError:
        raise  # a refusal of ours (an InvalidInput, so a ValueError too) is not damage
    except READ_ERRORS as exc:
        raise ArchiveError(rule, f"cannot be read: {exc}", member=member) from exc
