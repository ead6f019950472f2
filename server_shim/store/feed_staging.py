"""Temp files of the built-in feed: where a push or an upload lands before it is known good.

How it works. A `Staging` file is created in the feed folder as ``.staging-XXXXXXXX`` and
holds an exclusive ``flock`` for as long as its writer lives; bytes are hashed (SHA-512)
and counted as they are written. On success the file is renamed into the flat-container
layout (feed_store); on any failure `close` removes it. A writer killed with SIGKILL
cannot remove it, but the kernel drops its lock with its file descriptors, so
`clean_stale`, run when the server starts and before every `package push`, removes
every staging file nobody holds a lock on, and never one that a live push is writing.

The one race: a cleaner could lock and remove a file between its writer's ``mkstemp``
and ``flock``. The writer sees that (the file has no links left) and makes another.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from tentacle.common.logs import event

log = logging.getLogger("server_shim.store.feed_staging")
PREFIX = ".staging-"
# Left by `package push` before staging files were locked: always someone's leftover.
_OLD_PREFIX = ".push-"
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Staged:
    """A complete staged file: where it is, its SHA-512 (hex) and its size."""

    path: Path
    sha512: str
    size: int


class Staging:
    """One locked temp file in the feed folder, written and hashed; removed by `close` unless moved."""

    def __init__(self, feed_dir: Path) -> None:
        feed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd, name = tempfile.mkstemp(dir=feed_dir, prefix=PREFIX)
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner checks this very file
            if os.fstat(fd).st_nlink:
                break
            os.close(fd)  # a cleaner took it between mkstemp and flock: make another
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._digest = hashlib.sha512()
        self.size = 0

    def write(self, data: bytes | bytearray) -> None:
        """Append bytes (blocking)."""
        self._digest.update(data)
        self._file.write(data)
        self.size += len(data)

    def finish(self) -> Staged:
        """Flush and fsync; what was written, hashed."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return Staged(self.path, self._digest.hexdigest(), self.size)

    def close(self) -> None:
        """Remove the file unless it was moved away, then drop the lock."""
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino:
                self.path.unlink()
        self._file.close()

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def hash_copy(source: BinaryIO, target: BinaryIO, limit: int) -> tuple[str, int]:
    """Copy at most `limit` + 1 bytes, fsynced; returns (sha512 hex, bytes copied)."""
    digest, size = hashlib.sha512(), 0
    while size <= limit and (chunk := source.read(_CHUNK)):
        size += len(chunk)
        digest.update(chunk)
        target.write(chunk)
    target.flush()
    os.fsync(target.fileno())
    return digest.hexdigest(), size


def stage_file(feed_dir: Path, source: BinaryIO, limit: int) -> tuple[Staging, bool]:
    """Copy at most `limit` + 1 bytes of `source` into a new staging file, fsynced.

    Returns the staging (the caller closes it) and whether the source was over the limit.
    """
    staging = Staging(feed_dir)
    try:
        while staging.size <= limit and (chunk := source.read(_CHUNK)):
            staging.write(chunk)
        staging.finish()
    except BaseException:
        staging.close()
        raise
    return staging, staging.size > limit


def _remove_if_unlocked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # a live push holds it
    try:
        if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
            return False  # replaced meanwhile by another file of that name: not ours to judge
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def clean_stale(feed_dir: Path) -> int:
    """Remove the staging files no live process holds (left by a crash or kill -9); how many."""
    try:
        names = [entry.name for entry in os.scandir(feed_dir) if entry.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    removed = sum(
        _remove_if_unlocked(feed_dir / name) for name in names if name.startswith((PREFIX, _OLD_PREFIX))
    )
    if removed:
        event(log, "feed.stale_removed", files=removed, folder=str(feed_dir))
    return removed
