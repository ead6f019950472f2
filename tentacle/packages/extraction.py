"""Safe extraction of package archives: ``.nupkg``, ``.zip``, ``.tar.gz`` / ``.tgz``.

How it works, in three stages:

1. Open. The format comes from the file name and is confirmed by magic bytes. A zip's
   central directory is counted before zipfile loads it, so a hostile entry count costs
   no memory; a tar.gz is read through a stream that refuses to decompress past the
   compression-ratio budget or to hand tarfile an oversized header block.
2. Validate. Every member is checked (name rules, type, duplicates, file/directory
   conflicts, declared sizes, ratios, entry count) and a plan is built; for a .nupkg the
   .nuspec is parsed. Nothing has been written yet.
3. Write. Into a private sibling directory ``.NAME.partial-XXXX``: directories made one by
   one, files created with ``open(path, "xb")`` and streamed while the bytes are counted
   against the declared size and the limits (headers can lie). The directory is renamed
   onto ``dest`` on success and removed on any failure, so a bad archive leaves nothing.

tarfile's ``extractall`` and its ``filter="data"`` are never used: Python 3.11's filter
has known bypasses, and our own checks cover every member before any byte lands.

This module does blocking file I/O by design: the agent calls it in a worker thread.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from tentacle.errors import InvalidInput, TentacleError
from tentacle.protocol.nuspec import MAX_NUSPEC_BYTES, NuspecError, NuspecInfo, parse_nuspec

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB
_CHUNK = 256 * _KIB
# Longest single read tarfile may make (pax and GNU long-name blocks are read whole).
_MAX_TAR_READ = _MIB
# Linux NAME_MAX: a longer component could not be created anyway.
_MAX_COMPONENT_BYTES = 255

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"[A-Za-z]:")

# Exceptions the readers raise for damaged data (gzip.BadGzipFile is an OSError).
_READ_ERRORS = (
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


class ArchiveError(InvalidInput):
    """The archive breaks a rule: ``rule`` names it, ``member`` the entry (None: the archive)."""

    def __init__(self, rule: str, detail: str, *, member: str | None = None) -> None:
        where = "archive" if member is None else f"member {member!r}"
        super().__init__(f"{where} breaks rule '{rule}': {detail}", details={"rule": rule, "member": member})
        self.rule = rule
        self.member = member


class DestinationError(TentacleError):
    """The destination cannot take the tree: it is not empty, or writing failed."""


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
class ExtractionReport:
    """What an extraction wrote; ``nuspec`` is the manifest of a .nupkg (None otherwise)."""

    files: int
    bytes: int
    skipped_metadata: int
    nuspec: NuspecInfo | None = None


def extract(
    archive: Path, dest: Path, limits: Limits = DEFAULT_LIMITS, *, name: str | None = None
) -> ExtractionReport:
    """Extract ``archive`` into ``dest`` (absent or empty) after validating every member.

    ``name`` is the package's file name when the archive's own is not (a cache file is
    named by its hash); its ending says the format. Raises ArchiveError (naming the member
    and the rule) for a bad archive and DestinationError when dest cannot be written;
    either way nothing is left at dest.
    """
    kind = _archive_kind(name or archive.name)
    _check_destination(dest)
    with _open_reader(archive, kind, limits) as (reader, size):
        validator = _Validator(limits, size, nupkg=kind == "nupkg")
        with _reading("corrupt archive"):
            for entry in reader.entries():
                validator.add(entry)
        nuspec = _read_nuspec(validator.plan, reader) if kind == "nupkg" else None
        report = _write_into(dest, validator.plan, reader, limits)
    return replace(report, nuspec=nuspec)


# --- the two readers ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One member as the archive describes it."""

    name: str  # exactly as stored
    kind: str  # "file", "dir", or the rule a special member breaks ("symlink", ...)
    size: int  # declared uncompressed size
    packed: int | None  # declared compressed size; None where the format has none (tar)
    executable: bool
    handle: zipfile.ZipInfo | tarfile.TarInfo = field(repr=False)


class _Reader(Protocol):
    """What validation and writing need from an archive format."""

    def entries(self) -> Iterator[_Entry]: ...
    def open(self, entry: _Entry) -> IO[bytes]: ...
    def close(self) -> None: ...


_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_SPECIAL_MODES = {
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "device file",
    stat.S_IFBLK: "device file",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "special member",
}


class _ZipReader:
    """Members of a zip, from its central directory."""

    def __init__(self, file: BinaryIO, size: int, limits: Limits) -> None:
        _precount_zip(file, size, limits.max_entries)
        self._zip = zipfile.ZipFile(file)

    def entries(self) -> Iterator[_Entry]:
        """Every member, in central-directory order."""
        for info in self._zip.infolist():
            yield _zip_entry(info)

    def open(self, entry: _Entry) -> IO[bytes]:
        """A stream of the member's decompressed bytes."""
        assert isinstance(entry.handle, zipfile.ZipInfo)
        return self._zip.open(entry.handle)

    def close(self) -> None:
        """Release the zip."""
        self._zip.close()


def _zip_entry(info: zipfile.ZipInfo) -> _Entry:
    # orig_filename is the name before zipfile cut it at a NUL: validate what was stored.
    name = info.orig_filename
    if info.flag_bits & 0x1:
        raise ArchiveError("encrypted", "encrypted members are not supported", member=name)
    if info.compress_type not in _ZIP_METHODS:
        raise ArchiveError("compression method", f"method {info.compress_type} is not supported", member=name)
    mode = info.external_attr >> 16
    kind = _zip_kind(name, mode)
    if kind == "dir" and info.file_size:
        raise ArchiveError("directory with data", "a directory entry holds data", member=name)
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise ArchiveError("declared size", "a stored member's two declared sizes differ", member=name)
    executable = kind == "file" and bool(mode & 0o111)
    return _Entry(name, kind, info.file_size, info.compress_size, executable, info)


def _zip_kind(name: str, mode: int) -> str:
    file_type = stat.S_IFMT(mode)
    if file_type in _SPECIAL_MODES:
        return _SPECIAL_MODES[file_type]
    if name.endswith("/") or file_type == stat.S_IFDIR:
        return "dir"
    # No Unix mode at all (0) is how non-Unix tools write regular files.
    return "file" if file_type in (0, stat.S_IFREG) else "special member"


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

    def entries(self) -> Iterator[_Entry]:
        """Every member, read lazily so validation can stop at the first bad one."""
        while (info := self._tar.next()) is not None:
            kind = _TAR_KINDS.get(info.type, "special member")
            if info.sparse is not None:
                kind = "special member"  # sparse files expand holes that the size hides
            size = info.size if kind == "file" else 0
            yield _Entry(info.name, kind, size, None, bool(info.mode & 0o111), info)

    def open(self, entry: _Entry) -> IO[bytes]:
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
def _open_reader(archive: Path, kind: str, limits: Limits) -> Iterator[tuple[_Reader, int]]:
    try:
        file = archive.open("rb")
    except OSError as exc:
        raise ArchiveError("readable", f"cannot open {archive}: {exc.strerror}") from exc
    with file:
        size = os.fstat(file.fileno()).st_size
        _check_magic(file, kind)
        with _reading("corrupt archive"):
            reader: _Reader = (_TarReader if kind == "tar.gz" else _ZipReader)(file, size, limits)
        try:
            yield reader, size
        finally:
            reader.close()


def _archive_kind(file_name: str) -> str:
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
def _reading(rule: str, member: str | None = None) -> Iterator[None]:
    """Turn the readers' exceptions for damaged data into ArchiveError."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise ArchiveError(rule, f"cannot be read: {exc}", member=member) from exc


# --- validation --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    """A validated member: its normalised relative path and whether it is NuGet metadata."""

    path: str
    entry: _Entry
    skip: bool


class _Validator:
    """Checks members one by one, keeping what the whole-archive rules need."""

    def __init__(self, limits: Limits, archive_size: int, *, nupkg: bool) -> None:
        self._limits = limits
        self._archive_size = archive_size
        self._nupkg = nupkg
        self._names: set[str] = set()
        self._files: set[str] = set()
        self._parents: set[str] = set()
        self._count = 0
        self._total = 0
        self.plan: list[_Planned] = []

    def add(self, entry: _Entry) -> None:
        """Validate one member and plan it; raises ArchiveError at the first broken rule."""
        self._count += 1
        if self._count > self._limits.max_entries:
            detail = f"more than {self._limits.max_entries} entries"
            raise ArchiveError("entry count", detail, member=entry.name)
        path = _member_path(entry.name, entry.kind == "dir", self._limits.max_name_length)
        if entry.kind not in ("file", "dir"):
            detail = "only regular files and directories are allowed"
            raise ArchiveError(entry.kind, detail, member=entry.name)
        self._check_sizes(entry)
        if path:  # an empty path is the root itself ("./"): nothing to create
            self._claim(path, entry)
            skip = self._nupkg and _is_nuget_metadata(path)
            self.plan.append(_Planned(path, entry, skip))

    def _claim(self, path: str, entry: _Entry) -> None:
        if path in self._names:
            raise ArchiveError("duplicate name", f"another member is {path!r}", member=entry.name)
        if entry.kind == "file" and path in self._parents:
            detail = f"{path!r} is a file but other members are inside it"
            raise ArchiveError("path conflict", detail, member=entry.name)
        parent = path.rpartition("/")[0]
        while parent and parent not in self._parents:
            if parent in self._files:
                detail = f"{parent!r} is a file, not a directory"
                raise ArchiveError("path conflict", detail, member=entry.name)
            self._parents.add(parent)
            parent = parent.rpartition("/")[0]
        self._names.add(path)
        if entry.kind == "file":
            self._files.add(path)

    def _check_sizes(self, entry: _Entry) -> None:
        limits = self._limits
        self._total += entry.size
        if self._total > limits.max_total_bytes:
            detail = f"members add up to more than {limits.max_total_bytes} bytes"
            raise ArchiveError("total size", detail, member=entry.name)
        if entry.packed is not None and _too_compressed(entry.size, entry.packed, limits):
            detail = f"{entry.size} bytes from {entry.packed}, more than {limits.max_ratio:g}:1"
            raise ArchiveError("compression ratio", detail, member=entry.name)
        if _too_compressed(self._total, self._archive_size, limits):
            detail = (
                f"members so far expand to {self._total} bytes from a"
                f" {self._archive_size}-byte archive, more than {limits.max_ratio:g}:1"
            )
            raise ArchiveError("compression ratio", detail, member=entry.name)


def _too_compressed(size: int, packed: int, limits: Limits) -> bool:
    return size > limits.ratio_grace_bytes and size > limits.max_ratio * max(packed, 1)


def _member_path(name: str, is_dir: bool, max_length: int) -> str:
    """The normalised relative path of a member; raises ArchiveError for a hostile name."""
    _check_characters(name, max_length)
    if name.startswith("/"):
        raise ArchiveError("absolute path", "names must be relative", member=name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(".. component", "names must not climb out with '..'", member=name)
    if parts and _DRIVE.match(parts[0]):
        raise ArchiveError("drive letter", "names must not start with a drive", member=name)
    if any(len(part.encode()) > _MAX_COMPONENT_BYTES for part in parts):
        detail = f"a component is longer than {_MAX_COMPONENT_BYTES} bytes"
        raise ArchiveError("name too long", detail, member=name)
    if not parts and not is_dir:
        raise ArchiveError("empty name", "a file needs a name", member=name)
    return "/".join(parts)


def _check_characters(name: str, max_length: int) -> None:
    if "\x00" in name:
        raise ArchiveError("NUL in name", "names must not contain NUL", member=name)
    if _CONTROL.search(name):
        raise ArchiveError("control character in name", "names must be printable", member=name)
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:  # tar names that are not UTF-8 decode to surrogates
        raise ArchiveError("name encoding", "names must be UTF-8", member=name) from exc
    if len(encoded) > max_length:
        detail = f"{len(encoded)} bytes, more than {max_length}"
        raise ArchiveError("name too long", detail, member=name)
    if "\\" in name:
        raise ArchiveError("backslash", "names must use / as the separator", member=name)


def _is_nuget_metadata(path: str) -> bool:
    """NuGet's own packaging parts, which are not package content (compared as NuGet does)."""
    lowered = path.lower()
    return (
        lowered in ("[content_types].xml", "_rels", "package")
        or lowered.startswith(("_rels/", "package/"))
        or lowered.endswith(".psmdcp")
    )


def _read_nuspec(plan: list[_Planned], reader: _Reader) -> NuspecInfo:
    found = [
        member
        for member in plan
        if member.entry.kind == "file" and "/" not in member.path and member.path.lower().endswith(".nuspec")
    ]
    if len(found) != 1:
        detail = f"a .nupkg needs exactly one .nuspec at its root, found {len(found)}"
        raise ArchiveError("nuspec", detail)
    name = found[0].entry.name
    with _reading("corrupt data", name), reader.open(found[0].entry) as stream:
        data = stream.read(MAX_NUSPEC_BYTES + 1)
    try:
        return parse_nuspec(data)
    except NuspecError as exc:
        raise ArchiveError("nuspec", exc.message, member=name) from exc


# --- writing -----------------------------------------------------------------------------


def _check_destination(dest: Path) -> None:
    if not dest.name or not dest.parent.is_dir():
        raise DestinationError(f"{dest}: its parent directory does not exist")
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise DestinationError(f"{dest}: exists and is not an empty directory")


def _write_into(dest: Path, plan: list[_Planned], reader: _Reader, limits: Limits) -> ExtractionReport:
    """Write the plan into a private sibling directory, then rename it onto dest."""
    try:
        partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as exc:
        raise DestinationError(f"{dest}: cannot create a directory beside it: {exc}") from exc
    try:
        writer = _Writer(partial, limits)
        for member in plan:
            if not member.skip:
                writer.add(member, reader)
        os.chmod(partial, 0o755)  # noqa: S103 - package trees are world-readable by design
        os.rename(partial, dest)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):
            raise DestinationError(f"{dest}: cannot write: {exc}") from exc
        raise
    skipped = sum(1 for member in plan if member.skip)
    return ExtractionReport(writer.files, writer.bytes, skipped)


class _Writer:
    """Creates the planned tree under a root we own, counting every byte written."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self._root = root
        self._limits = limits
        self._dirs = {""}
        self.files = 0
        self.bytes = 0

    def add(self, member: _Planned, reader: _Reader) -> None:
        """Create one directory or write one file."""
        if member.entry.kind == "dir":
            self._directory(member.path)
            return
        self._directory(member.path.rpartition("/")[0])
        with _reading("corrupt data", member.entry.name):
            source = reader.open(member.entry)
        with source, (self._root / member.path).open("xb") as out:
            os.fchmod(out.fileno(), 0o755 if member.entry.executable else 0o644)
            self._copy(member.entry, source, out)
        self.files += 1

    def _directory(self, path: str) -> None:
        missing = []
        while path not in self._dirs:
            missing.append(path)
            path = path.rpartition("/")[0]
        for directory in reversed(missing):
            target = self._root / directory
            target.mkdir(mode=0o755)
            target.chmod(0o755)  # mkdir's mode is filtered by the umask
            self._dirs.add(directory)

    def _copy(self, entry: _Entry, source: IO[bytes], out: BinaryIO) -> None:
        written = 0
        while chunk := _read_chunk(entry, source):
            written += len(chunk)
            self.bytes += len(chunk)
            if written > entry.size:
                detail = f"holds more than the {entry.size} bytes its header declares"
                raise ArchiveError("declared size", detail, member=entry.name)
            if self.bytes > self._limits.max_total_bytes:
                detail = f"more than {self._limits.max_total_bytes} bytes written"
                raise ArchiveError("total size", detail, member=entry.name)
            out.write(chunk)
        if written != entry.size:
            detail = f"holds {written} bytes but its header declares {entry.size}"
            raise ArchiveError("declared size", detail, member=entry.name)


def _read_chunk(entry: _Entry, source: IO[bytes]) -> bytes:
    try:
        return source.read(_CHUNK)
    except zipfile.BadZipFile as exc:
        # While reading, zipfile raises this only when the CRC check fails, which is
        # how a header that under-declares the size shows up (zipfile stops there).
        detail = f"its data does not match the size and CRC in its header ({exc})"
        raise ArchiveError("declared size", detail, member=entry.name) from exc
    except _READ_ERRORS as exc:
        raise ArchiveError("corrupt data", f"cannot be read: {exc}", member=entry.name) from exc
