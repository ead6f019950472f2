"""Safe extraction of package archives: ``.nupkg``, ``.zip``, ``.tar.gz`` / ``.tgz``.

How it works, in three stages:

1. Open (tentacle.packages.archives). The format comes from the file name and is confirmed
   by magic bytes. A zip's central directory is counted before zipfile loads it, so a
   hostile entry count costs no memory; a tar.gz is read through a stream that refuses to
   decompress past the compression-ratio budget or to hand tarfile an oversized header block.
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

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, BinaryIO

from tentacle.errors import TentacleError
from tentacle.packages.archives import (
    DEFAULT_LIMITS,
    READ_ERRORS,
    ArchiveError,
    Entry,
    Limits,
    Reader,
    archive_kind,
    open_reader,
    reading,
)
from tentacle.protocol.member_names import is_nuget_metadata, member_path
from tentacle.protocol.nuspec import MAX_NUSPEC_BYTES, NuspecError, NuspecInfo, parse_nuspec

_CHUNK = 256 * 1024


class DestinationError(TentacleError):
    """The destination cannot take the tree: it is not empty, or writing failed."""


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
    kind = archive_kind(name or archive.name)
    _check_destination(dest)
    with open_reader(archive, kind, limits) as (reader, size):
        validator = _Validator(limits, size, nupkg=kind == "nupkg")
        with reading("corrupt archive"):
            for entry in reader.entries():
                validator.add(entry)
        nuspec = _read_nuspec(validator.plan, reader) if kind == "nupkg" else None
        report = _write_into(dest, validator.plan, reader, limits)
    return replace(report, nuspec=nuspec)


# --- validation --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    """A validated member: its normalised relative path and whether it is NuGet metadata."""

    path: str
    entry: Entry
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

    def add(self, entry: Entry) -> None:
        """Validate one member and plan it; raises ArchiveError at the first broken rule."""
        self._count += 1
        if self._count > self._limits.max_entries:
            detail = f"more than {self._limits.max_entries} entries"
            raise ArchiveError("entry count", detail, member=entry.name)
        limit = self._limits.max_name_length
        path = member_path(entry.name, entry.kind == "dir", limit, percent_encoded=self._nupkg)
        if entry.kind not in ("file", "dir"):
            detail = "only regular files and directories are allowed"
            raise ArchiveError(entry.kind, detail, member=entry.name)
        self._check_sizes(entry)
        if path:  # an empty path is the root itself ("./"): nothing to create
            self._claim(path, entry)
            skip = self._nupkg and is_nuget_metadata(path)
            self.plan.append(_Planned(path, entry, skip))

    def _claim(self, path: str, entry: Entry) -> None:
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

    def _check_sizes(self, entry: Entry) -> None:
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


def _read_nuspec(plan: list[_Planned], reader: Reader) -> NuspecInfo:
    found = [
        member
        for member in plan
        if member.entry.kind == "file" and "/" not in member.path and member.path.lower().endswith(".nuspec")
    ]
    if len(found) != 1:
        detail = f"a .nupkg needs exactly one .nuspec at its root, found {len(found)}"
        raise ArchiveError("nuspec", detail)
    name = found[0].entry.name
    with reading("corrupt data", name), reader.open(found[0].entry) as stream:
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


def _write_into(dest: Path, plan: list[_Planned], reader: Reader, limits: Limits) -> ExtractionReport:
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

    def add(self, member: _Planned, reader: Reader) -> None:
        """Create one directory or write one file."""
        if member.entry.kind == "dir":
            self._directory(member.path)
            return
        self._directory(member.path.rpartition("/")[0])
        with reading("corrupt data", member.entry.name):
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

    def _copy(self, entry: Entry, source: IO[bytes], out: BinaryIO) -> None:
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


def _read_chunk(entry: Entry, source: IO[bytes]) -> bytes:
    try:
        return source.read(_CHUNK)
    except zipfile.BadZipFile as exc:
        # While reading, zipfile raises this only when the CRC check fails, which is
        # how a header that under-declares the size shows up (zipfile stops there).
        detail = f"its data does not match the size and CRC in its header ({exc})"
        raise ArchiveError("declared size", detail, member=entry.name) from exc
    except READ_ERRORS as exc:
        raise ArchiveError("corrupt data", f"cannot be read: {exc}", member=entry.name) from exc
