"""The package cache: files named by the SHA-512 of their bytes, verified before they land.

How it works. Under the cache root::

    sha512/<first 2 hex>/<128 hex>    verified package files, and nothing else
    partial/<128 hex>.part            a download in progress, or cut and kept for resume
    partial/<128 hex>.part.json       where the partial's bytes came from (its validator)

A download is appended to its ``.part`` by `PartialWriter`, which hashes every byte as it
is written (in threads: hashlib and os.pwrite release the GIL); resuming first hashes the
bytes already there. The fetch ends with one fsync; its size and SHA-512 are compared with
the plan, and only then is the file renamed under ``sha512/`` (and the directory fsynced).
A crash at any point leaves at worst a ``.part``, which the next download resumes (and
verifies) or `evict` removes once it is old.

`PackageCache.get` shares one download between every caller that wants the same file at
the same time. A file's modification time is its least-recently-used record (touched on
every hit); `evict` removes the oldest files that no running task holds (`lease`) until
the filesystem has the configured share of free space again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tentacle.common.atomicfile import fsync_directory
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.plan import PlannedPackage

__all__ = [
    "CacheError",
    "Digest",
    "DiskUsage",
    "Fetch",
    "PackageCache",
    "Partial",
    "PartialWriter",
]

log = logging.getLogger(__name__)

_SHA512 = re.compile(r"[0-9a-f]{128}")
BUFFER_SIZE = 4 * 1024 * 1024
# Buffers per writer: enough to keep both threads busy, few enough to bound memory.
_BUFFERS = 8
# O_DIRECT writes start and end on this boundary (the page size covers every disk's).
_BLOCK = 4096
# A partial nobody resumed for this long is abandoned.
PARTIAL_MAX_AGE = 24 * 3600.0


class CacheError(TentacleError):
    """The cache cannot store or verify a package file (disk full, bad bytes, bad name)."""


@dataclass(frozen=True)
class Digest:
    """The SHA-512 (hex) and length of bytes as they were written."""

    sha512: str
    size: int


class DiskUsage(Protocol):
    """What `shutil.disk_usage` returns, as far as eviction needs it."""

    @property
    def total(self) -> int:
        """Bytes on the filesystem."""

    @property
    def free(self) -> int:
        """Bytes free on the filesystem."""


# Fills the partial it is given and returns the digest of the whole file as written.
Fetch = Callable[[PlannedPackage, "Partial"], Awaitable[Digest]]


def check_sha512(sha512: str) -> str:
    """`sha512` if it is 128 lowercase hex digits (it becomes a file name), else CacheError."""
    if not _SHA512.fullmatch(sha512):
        raise CacheError(f"not a SHA-512 in lowercase hex: {sha512[:140]!r}")
    return sha512


class Partial:
    """A package's ``.part`` file and the validator (ETag or Last-Modified) of its bytes."""

    def __init__(self, path: Path) -> None:
        """The partial at `path`; its validator lives beside it in ``<path>.json``."""
        self.path = path
        self.meta = path.with_name(path.name + ".json")

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
        temporary = self.meta.with_name(self.meta.name + ".tmp")
        try:
            # Renamed into place, not fsynced: a lost validator only costs a fresh start.
            temporary.write_text(body)
            os.replace(temporary, self.meta)
        except OSError as exc:
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


@dataclass
class _Download:
    """One download in flight and how many callers wait for it."""

    task: asyncio.Task[Path]
    waiters: int = 0

    async def wait(self) -> Path:
        """The downloaded file; the download stops only when its last waiter gives up."""
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.waiters == 1:
                self.task.cancel()
                await asyncio.wait([self.task])  # return once it has stopped and closed its files
                if not self.task.cancelled():
                    self.task.exception()  # retrieved: the cancellation is what the caller gets
            raise
        finally:
            self.waiters -= 1


class PackageCache:
    """Verified package files by SHA-512, shared downloads, leases and LRU eviction."""

    def __init__(
        self,
        root: Path,
        min_free_share: float = 0.2,
        *,
        usage: Callable[[Path], DiskUsage] = shutil.disk_usage,
        partial_max_age: float = PARTIAL_MAX_AGE,
    ) -> None:
        """A cache under `root`; `usage` reports the filesystem (tests pass their own)."""
        if not 0.0 <= min_free_share < 1.0:
            raise CacheError(f"cache min_free_share: must be in [0, 1), not {min_free_share}")
        self.root = root
        self.min_free_share = min_free_share
        self.partial_max_age = partial_max_age
        self._usage = usage
        self._inflight: dict[str, _Download] = {}
        self._leases: dict[str, int] = {}

    def file_path(self, sha512: str) -> Path:
        """Where the verified file with this SHA-512 lives (whether or not it does)."""
        check_sha512(sha512)
        return self.root / "sha512" / sha512[:2] / sha512

    def partial(self, sha512: str) -> Partial:
        """The partial download of this SHA-512."""
        return Partial(self.root / "partial" / f"{check_sha512(sha512)}.part")

    def path_if_cached(self, sha512: str) -> Path | None:
        """The verified file, marked as just used, or None when it is not cached."""
        path = self.file_path(sha512)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError:  # a read-only cache still serves hits; only the LRU record is lost
            pass
        return path

    async def get(self, pkg: PlannedPackage, fetch: Fetch) -> Path:
        """The verified file of `pkg`, fetched once however many callers ask at the same time."""
        hit = self._hit(pkg)
        if hit is not None:
            return hit
        download = self._inflight.get(pkg.sha512)
        if download is None:
            download = _Download(asyncio.create_task(self._download(pkg, fetch)))
            self._inflight[pkg.sha512] = download
            download.task.add_done_callback(lambda _: self._forget(pkg.sha512, download))
        return await download.wait()

    @contextlib.contextmanager
    def lease(self, sha512: str) -> Iterator[None]:
        """Mark a package as used by a running task: `evict` leaves it alone meanwhile."""
        check_sha512(sha512)
        self._leases[sha512] = self._leases.get(sha512, 0) + 1
        try:
            yield
        finally:
            self._leases[sha512] -= 1
            if not self._leases[sha512]:
                del self._leases[sha512]

    def evict(self, reserve: int = 0) -> list[str]:
        """Remove least-recently-used files nobody holds until the free share is met again.

        `reserve` bytes are counted as already used (room for a download about to start).
        Abandoned partials go first. Returns the SHA-512s of the files removed.
        """
        return self._evict(reserve, self._held())

    def _held(self) -> frozenset[str]:
        """Leased and downloading SHA-512s (read on the event loop, used in a thread)."""
        return frozenset(self._leases) | frozenset(self._inflight)

    def _evict(self, reserve: int, held: frozenset[str]) -> list[str]:
        """`evict` with the held set taken on the event loop (this runs in a thread too)."""
        self._remove_stale_partials(held)
        removed: list[str] = []
        for sha512, path in self._files_oldest_first():
            if self._has_room(reserve):
                break
            if sha512 not in held:
                path.unlink(missing_ok=True)
                removed.append(sha512)
                event(log, "package.evicted", sha512=sha512[:16])
        return removed

    def _has_room(self, reserve: int) -> bool:
        """Whether the free share is met with `reserve` more bytes used."""
        usage = self._usage(self.root)
        return usage.total <= 0 or (usage.free - reserve) / usage.total >= self.min_free_share

    def _files_oldest_first(self) -> list[tuple[str, Path]]:
        """Every verified file, least recently used first."""
        entries: list[tuple[float, str, Path]] = []
        for path in (self.root / "sha512").glob("??/*"):
            with contextlib.suppress(FileNotFoundError):
                if _SHA512.fullmatch(path.name):
                    entries.append((path.stat().st_mtime, path.name, path))
        return [(sha512, path) for _, sha512, path in sorted(entries)]

    def _remove_stale_partials(self, held: frozenset[str]) -> None:
        """Remove partials nobody downloads that were not touched for `partial_max_age`."""
        cutoff = time.time() - self.partial_max_age
        for path in (self.root / "partial").glob("*.part"):
            sha512 = path.name.removesuffix(".part")
            with contextlib.suppress(FileNotFoundError):
                if sha512 not in held and path.stat().st_mtime < cutoff:
                    Partial(path).discard()

    def _hit(self, pkg: PlannedPackage) -> Path | None:
        """The cached file if its size is right; a wrong one (tampered) is removed."""
        path = self.path_if_cached(pkg.sha512)
        if path is None:
            return None
        if path.stat().st_size == pkg.size:
            return path
        event(log, "package.cache_corrupt", logging.WARNING, package=pkg.id, path=path)
        path.unlink(missing_ok=True)
        return None

    def _forget(self, sha512: str, download: _Download) -> None:
        """The download ended: the next get starts a new one (or hits the cache)."""
        if self._inflight.get(sha512) is download:
            del self._inflight[sha512]

    async def _download(self, pkg: PlannedPackage, fetch: Fetch) -> Path:
        """Fetch into the partial, check size and SHA-512, then rename into place."""
        await asyncio.to_thread(self._evict, pkg.size, self._held())
        partial = self.partial(pkg.sha512)
        partial.path.parent.mkdir(parents=True, exist_ok=True)
        digest = await fetch(pkg, partial)
        if digest != Digest(pkg.sha512, pkg.size):
            partial.discard()
            raise CacheError(
                f"{pkg.id} {pkg.version}: got {digest.size} bytes with sha512 {digest.sha512[:16]}…, "
                f"expected {pkg.size} bytes with sha512 {pkg.sha512[:16]}…"
            )
        return await asyncio.to_thread(self._store, partial, pkg.sha512)

    def _store(self, partial: Partial, sha512: str) -> Path:
        """Rename a verified partial into place, durably; the file becomes read-only."""
        final = self.file_path(sha512)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(partial.path, 0o444)
        os.replace(partial.path, final)
        partial.meta.unlink(missing_ok=True)
        fsync_directory(final.parent)
        return final
