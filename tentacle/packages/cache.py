"""The package cache: files named by the SHA-512 of their bytes, verified before they land.

How it works. Under the cache root::

    sha512/<first 2 hex>/<128 hex>    verified package files, and nothing else
    partial/<128 hex>.part            a download in progress, or cut and kept for resume
    partial/<128 hex>.part.json       where the partial's bytes came from (its validator)

A download is written into its partial (tentacle.packages.partial: `Partial`, and
`PartialWriter`, which hashes every byte as it is written). The fetch ends with one
fsync; its size and SHA-512 are compared with the plan, and only then is the file renamed
under ``sha512/`` (and the directory fsynced). A crash at any point leaves at worst a
``.part``, which the next download resumes (and verifies); what else an interrupted
download leaves (old partials, half-written validators) goes at the daemon's start and
after every failed download (tentacle.packages.leftovers).

`PackageCache.get` shares one download between every caller that wants the same file at
the same time. A file's modification time is its least-recently-used record (touched on
every hit); `evict` removes the oldest files that no running task holds (`lease`) until
the filesystem has the configured share of free space again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tentacle.common.atomicfile import fsync_directory
from tentacle.common.logs import event
from tentacle.packages.leftovers import PARTIAL_MAX_AGE, sweep_cache
from tentacle.packages.partial import CacheError, Digest, Partial
from tentacle.protocol.plan import PlannedPackage

__all__ = [
    "DiskUsage",
    "Fetch",
    "PackageCache",
]

log = logging.getLogger(__name__)

_SHA512 = re.compile(r"[0-9a-f]{128}")


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

    async def get(self, pkg: PlannedPackage, fetch: Fetch, *, fresh: bool = False) -> Path:
        """The verified file of `pkg`, fetched once however many callers ask at the same time.

        ``fresh`` fetches it even when it is cached (a forced redeployment); the new file
        replaces the old one atomically, so a task still reading the old one is not disturbed.
        """
        hit = None if fresh else self._hit(pkg)
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

    def sweep(self) -> None:
        """Remove what interrupted downloads left (not those under way; blocking: for a thread)."""
        sweep_cache(self.root, self.partial_max_age, self._held())

    def _evict(self, reserve: int, held: frozenset[str]) -> list[str]:
        """`evict` with the held set taken on the event loop (this runs in a thread too)."""
        sweep_cache(self.root, self.partial_max_age, held)
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
        try:
            digest = await fetch(pkg, partial)
        except BaseException:
            # The partial stays for a resume; what else the failure (or earlier ones) left goes.
            await asyncio.shield(asyncio.to_thread(self._after_failure, partial, self._held() - {pkg.sha512}))
            raise
        if digest != Digest(pkg.sha512, pkg.size):
            partial.discard()
            raise CacheError(
                f"{pkg.id} {pkg.version}: got {digest.size} bytes with sha512 {digest.sha512[:16]}…, "
                f"expected {pkg.size} bytes with sha512 {pkg.sha512[:16]}…"
            )
        return await asyncio.to_thread(self._store, partial, pkg.sha512)

    def _after_failure(self, partial: Partial, held: frozenset[str]) -> None:
        """A download failed: its half-written validator and the cache's other litter go."""
        with contextlib.suppress(OSError):
            partial.temporary.unlink(missing_ok=True)
        sweep_cache(self.root, self.partial_max_age, held | {partial.path.name.removesuffix(".part")})

    def _store(self, partial: Partial, sha512: str) -> Path:
        """Rename a verified partial into place, durably; the file becomes read-only."""
        final = self.file_path(sha512)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(partial.path, 0o444)
        os.replace(partial.path, final)
        partial.meta.unlink(missing_ok=True)
        fsync_directory(final.parent)
        return final
