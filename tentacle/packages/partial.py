"""A download in progress: its ``.part`` file, the validator of its bytes, and their writer.

How it works. Under the cache root (see tentacle.packages.cache)::

    partial/<128 hex>.part            a download in progress, or cut and kept for resume
    partial/<128 hex>.part.json       where the partial's bytes came from (its validator)

A download is appended to its ``.part`` by `PartialWriter`, which hashes every byte as it
is written (in threads: hashlib and os.pwrite release the GIL); resuming first hashes the
bytes already there. The fetch ends with one fsync, and `PartialWriter.finish` returns the
`Digest` (SHA-512 and size) of the whole file; the cache compares it with the plan before
the file lands under ``sha512/``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tentacle.errors import TentacleError

__all__ = [
    "CacheError",
    "Digest",
    "Partial",
    "PartialWriter",
]

BUFFER_SIZE = 4 * 1024 * 1024
# Buffers per writer: enough to keep both threads busy, few enough to bound memory.
_BUFFERS = 8
# O_DIRECT writes start and end on this boundary (the page size covers every disk's).
_BLOCK = 4096


class CacheError(TentacleError):
    """The cache cannot store or verify a package file (disk full, bad bytes, bad name)."""


@dataclass(frozen=True)
class Digest:
    """The SHA-512 (hex) and length of bytes as they were written."""

    sha512: str
    size: int


class Partial:
    """A package's ``.part`` file and the validator (ETag or Last-Modified) of its bytes."""

    def __init__(self, path: Path) -> None:
        """The partial at `path`; its validator lives beside it in ``<path>.json``."""
        self.path = path
        self.meta = path.with_name(path.name + ".json")
        self.temporary = self.meta.with_name(self.meta.name + ".tmp")  # the validator being written

    def size(self) -> int:
        """Bytes already in the partial (0 when there is none)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def validator(self) -> str | None:
        """The strong validator the bytes came with, or None when it is unknown."""
        try:
            value = json.loads(self.meta.read_text()).get("validator")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None

    def save_validator(self, validator: str | None, url: str) -> None:
        """Record where the bytes about to be written come from (None: not resumable)."""
        if validator is None:
            self.meta.unlink(missing_ok=True)
            return
        body = json.dumps({"validator": validator, "url": url})
        try:
            # Renamed into place, not fsynced: a lost validator only costs a fresh start.
            self.temporary.write_text(body)
            os.replace(self.temporary, self.meta)
        except OSError as exc:
            with contextlib.suppress(OSError):  # a full disk leaves a half-written one
                self.temporary.unlink(missing_ok=True)
            raise CacheError(f"{self.meta}: cannot write: {exc.strerror or exc}") from exc

    def discard(self) -> None:
        """Remove the partial and its validator."""
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


class PartialWriter:
    """Appends to a partial from one producer thread; two threads of its own hash and write.

    Blocking, for a worker thread. The producer fills `buffer()` (a view of a page-aligned
    buffer, which a socket's ``readinto`` fills with no copy) and hands it over with
    `commit`; `write` copies bytes in for producers that hold them already. The hash
    thread and the write thread take each buffer in order and return it to a small pool
    when both are done: memory stays bounded, and the producer waits only when both are
    behind. Writes use O_DIRECT where the filesystem has it, so the bytes go to disk once
    without filling the page cache and the final fsync is cheap; the bytes after the last
    block boundary are carried into the next buffer, so every write stays block-aligned.
    `finish` fsyncs and returns the `Digest` of the whole file; `close` keeps the bytes.
    """

    def __init__(self, path: Path, offset: int = 0, *, direct: bool = True) -> None:
        """Open `path` to append at `offset` (the bytes before it are hashed first; 0 truncates)."""
        self.path = path
        self.size = offset
        try:
            self._hash, self._carry = _hash_prefix(path, offset)
            self._fd, self.direct = _open_for_writing(path, offset, direct)
        except OSError as exc:
            raise CacheError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        self._pos = offset - len(self._carry)  # the file offset of the next buffer: aligned
        self._filling: mmap.mmap | None = None
        self._filled = 0  # bytes `write` put into `_filling` so far
        self._pool: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(_BUFFERS):
            self._pool.put(mmap.mmap(-1, BUFFER_SIZE))
        self._error: OSError | None = None
        self._lock = threading.Lock()
        self._queues: tuple[queue.SimpleQueue[_Job | None], ...] = (queue.SimpleQueue(), queue.SimpleQueue())
        workers = zip(self._queues, (self._hash_one, self._write_one), ("hash", "write"), strict=True)
        self._threads = [
            threading.Thread(target=self._run, args=(jobs, work), name=f"partial-{name}", daemon=True)
            for jobs, work, name in workers
        ]
        for thread in self._threads:
            thread.start()

    def buffer(self) -> memoryview:
        """Space to fill (waits while every buffer is busy); CacheError after a failed write."""
        if self._filling is None:
            self._raise_if_failed()
            self._filling = self._pool.get()
            self._filling[: len(self._carry)] = self._carry
        return memoryview(self._filling)[len(self._carry) :]

    def commit(self, count: int) -> None:
        """Hand the first `count` bytes put into `buffer()` to the hash and write threads."""
        buffer, self._filling, self._filled = self._filling, None, 0
        if buffer is None or not 0 <= count <= BUFFER_SIZE - len(self._carry):
            raise ValueError("commit without a buffer, or of more bytes than it holds")
        start, end = len(self._carry), len(self._carry) + count
        job = _Job(buffer, start, end, end - end % _BLOCK, self._pos)
        self._carry = bytes(buffer[job.aligned : end])
        self._pos += job.aligned
        self.size += count
        for jobs in self._queues:
            jobs.put(job)

    def write(self, data: bytes | memoryview) -> None:
        """Copy `data` in (for producers that already hold the bytes).

        A buffer is handed over only when it is full (or at `finish`/`close`), so that
        small pieces still make large writes.
        """
        view = memoryview(data)
        while view:
            space = self.buffer()
            count = min(len(space) - self._filled, len(view))
            space[self._filled : self._filled + count] = view[:count]
            self._filled += count
            view = view[count:]
            if self._filled == len(space):
                self.commit(self._filled)

    def finish(self) -> Digest:
        """Write what is left, fsync, close; the digest of the whole file."""
        try:
            self._stop()
            self._raise_if_failed()
            try:
                self._write_tail()
                os.fsync(self._fd)
            except OSError as exc:
                raise CacheError(f"{self.path}: cannot write: {exc.strerror or exc}") from exc
        finally:
            os.close(self._fd)
        return Digest(self._hash.hexdigest(), self.size)

    def close(self) -> None:
        """Stop without fsync; the bytes written so far stay for a resume."""
        try:
            self._stop()
            if self._error is None:
                with contextlib.suppress(OSError):
                    self._write_tail()
        finally:
            os.close(self._fd)

    def _stop(self) -> None:
        """Let both threads finish the queued buffers, then end them."""
        if self._filling is not None and self._filled:
            self.commit(self._filled)
        if self._filling is not None:
            self._pool.put(self._filling)
            self._filling = None
        for jobs in self._queues:
            jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _write_tail(self) -> None:
        """The carried bytes, padded to a block for O_DIRECT; then the file cut to its size."""
        if not self._carry:
            return
        buffer = self._pool.get()
        padded = -(-len(self._carry) // _BLOCK) * _BLOCK
        buffer[:padded] = self._carry.ljust(padded, b"\0")
        self._pwrite(memoryview(buffer)[:padded], self._pos)
        os.ftruncate(self._fd, self._pos + len(self._carry))
        self._pool.put(buffer)

    def _raise_if_failed(self) -> None:
        """CacheError for the first failed write, if any."""
        if self._error is not None:
            raise CacheError(f"{self.path}: cannot write: {self._error.strerror or self._error}")

    def _run(self, jobs: queue.SimpleQueue[_Job | None], work: Callable[[_Job], None]) -> None:
        """A worker thread: `work` on each job until the end marker; after an error, skip."""
        while (job := jobs.get()) is not None:
            try:
                if self._error is None:
                    work(job)
            except OSError as exc:
                self._error = exc
            finally:
                self._release(job)

    def _hash_one(self, job: _Job) -> None:
        """Hash thread: the new bytes of one buffer."""
        self._hash.update(memoryview(job.buffer)[job.start : job.end])

    def _write_one(self, job: _Job) -> None:
        """Write thread: the block-aligned part of one buffer, at its place in the file."""
        self._pwrite(memoryview(job.buffer)[: job.aligned], job.pos)

    def _pwrite(self, view: memoryview, pos: int) -> None:
        """Write all of `view` at `pos`; if O_DIRECT refuses the alignment, go on without it."""
        try:
            _write_all(self._fd, view, pos)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct:
                raise
            # A device with blocks larger than _BLOCK: the page cache takes it from here.
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False
            _write_all(self._fd, view, pos)

    def _release(self, job: _Job) -> None:
        """Return the buffer to the pool once both threads are done with it."""
        with self._lock:
            job.pending -= 1
            done = job.pending == 0
        if done:
            self._pool.put(job.buffer)


@dataclass
class _Job:
    """One buffer for the worker threads: hash [start, end), write [0, aligned) at `pos`."""

    buffer: mmap.mmap
    start: int
    end: int
    aligned: int
    pos: int
    pending: int = 2


def _hash_prefix(path: Path, offset: int) -> tuple[hashlib._Hash, bytes]:
    """The SHA-512 of the first `offset` bytes, and the bytes after their last block boundary."""
    digest = hashlib.sha512()
    if not offset:
        return digest, b""
    block = b""
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb", buffering=0) as file:
        remaining = offset
        while remaining:
            block = file.read(min(BUFFER_SIZE, remaining))
            if not block:
                raise CacheError(f"{path}: shorter than the {offset} bytes to resume from")
            digest.update(block)
            remaining -= len(block)
    tail = offset % _BLOCK
    return digest, block[len(block) - tail :] if tail else b""


def _open_for_writing(path: Path, offset: int, direct: bool) -> tuple[int, bool]:
    """A write descriptor, O_DIRECT when asked and possible, for a file cut at `offset`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (0 if offset else os.O_TRUNC)
    fd = -1
    if direct:
        with contextlib.suppress(OSError):  # EINVAL: tmpfs and a few others have no O_DIRECT
            fd = os.open(path, flags | os.O_DIRECT, 0o644)
    if fd < 0:
        fd, direct = os.open(path, flags, 0o644), False
    if offset:  # drop whatever lies past the bytes being resumed from
        try:
            os.ftruncate(fd, offset)
        except BaseException:
            os.close(fd)
            raise
    return fd, direct


def _write_all(fd: int, view: memoryview, pos: int) -> None:
    """pwrite all of `view` at `pos` (a short write continues where it stopped)."""
    while view:
        written = os.pwrite(fd, view, pos)
        view, pos = view[written:], pos + written
