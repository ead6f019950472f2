"""The package cache: verified storage, shared downloads, leases, LRU eviction, the writer.

Real files on the real filesystem; a fetch here is a plain function that writes the
partial as a download would. Eviction is driven through the injectable ``usage`` seam
(a filesystem whose capacity is a few files), so it can be proven without filling a disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tentacle.packages.cache import DiskUsage, PackageCache
from tentacle.packages.partial import BUFFER_SIZE, CacheError, Digest, Partial, PartialWriter
from tentacle.protocol.plan import PlannedPackage

pytestmark = pytest.mark.timeout(30)


def planned(data: bytes, name: str = "OctoPetShop.Web") -> PlannedPackage:
    """A plan entry for exactly `data`."""
    return PlannedPackage(
        id=name,
        version="1.0.0",
        sha512=hashlib.sha512(data).hexdigest(),
        size=len(data),
        file_name=f"{name.lower()}.1.0.0.zip",
    )


class Fetcher:
    """A fetch that writes given bytes into the partial, as a download would; counts calls."""

    def __init__(self, data: bytes, delay: float = 0.0) -> None:
        """Write `data` after `delay` seconds."""
        self.data = data
        self.delay = delay
        self.calls = 0

    async def __call__(self, pkg: PlannedPackage, partial: Partial) -> Digest:
        """Fill the partial and return what the writer hashed."""
        self.calls += 1
        await asyncio.sleep(self.delay)
        return await asyncio.to_thread(self._write, partial.path)

    def _write(self, path: Path) -> Digest:
        writer = PartialWriter(path)
        writer.write(self.data)
        return writer.finish()


@dataclass
class SmallDisk:
    """A filesystem `capacity` bytes big whose only content is the cache's files."""

    root: Path
    capacity: int

    def __call__(self, _path: Path) -> DiskUsage:
        """What shutil.disk_usage would say (total and free), as the cache reads it."""
        used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return _Usage(self.capacity, self.capacity - used)


@dataclass(frozen=True)
class _Usage:
    total: int
    free: int


def store(cache: PackageCache, data: bytes, age: float) -> str:
    """Put a verified file straight into the cache, last used `age` seconds ago."""
    sha512 = hashlib.sha512(data).hexdigest()
    path = cache.file_path(sha512)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return sha512


# --- the writer ------------------------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False])
def test_writer_hashes_and_writes_every_byte_whatever_the_chunking(tmp_path: Path, direct: bool) -> None:
    """Odd-sized chunks, some larger than a buffer, land intact and hashed (O_DIRECT or not)."""
    data = os.urandom(2 * BUFFER_SIZE + 12345)
    writer = PartialWriter(tmp_path / "x.part", direct=direct)
    for start, end in [(0, 1), (1, 4097), (4097, BUFFER_SIZE + 3), (BUFFER_SIZE + 3, len(data))]:
        writer.write(data[start:end])
    digest = writer.finish()
    assert digest == Digest(hashlib.sha512(data).hexdigest(), len(data))
    assert (tmp_path / "x.part").read_bytes() == data


def test_writer_fills_buffers_given_to_a_reader_without_copies(tmp_path: Path) -> None:
    """buffer()/commit() (how a socket reads straight in) give the same file and digest."""
    data = os.urandom(BUFFER_SIZE + 999)
    writer = PartialWriter(tmp_path / "x.part")
    done = 0
    while done < len(data):
        space = writer.buffer()
        count = min(len(space), len(data) - done, 700_000)
        space[:count] = data[done : done + count]
        writer.commit(count)
        done += count
    assert writer.finish().sha512 == hashlib.sha512(data).hexdigest()
    assert (tmp_path / "x.part").read_bytes() == data


def test_writer_resumes_at_an_unaligned_offset(tmp_path: Path) -> None:
    """close() keeps the bytes; reopening at that offset hashes them and appends the rest."""
    data = os.urandom(3 * 1024 * 1024 + 777)
    cut = 1024 * 1024 + 4321
    first = PartialWriter(tmp_path / "x.part")
    first.write(data[:cut])
    first.close()
    assert (tmp_path / "x.part").read_bytes() == data[:cut]
    second = PartialWriter(tmp_path / "x.part", cut)
    second.write(data[cut:])
    assert second.finish() == Digest(hashlib.sha512(data).hexdigest(), len(data))
    assert (tmp_path / "x.part").read_bytes() == data


def test_writer_reports_a_full_disk_instead_of_hanging() -> None:
    """Writes to /dev/full fail with ENOSPC, surfaced as CacheError naming the cause."""

    def fill_and_finish(writer: PartialWriter) -> None:
        for _ in range(16):
            writer.write(bytes(BUFFER_SIZE))
        writer.finish()

    with pytest.raises(CacheError, match="No space left on device"):
        fill_and_finish(PartialWriter(Path("/dev/full")))


def test_writer_refuses_to_resume_past_the_end_of_the_file(tmp_path: Path) -> None:
    """Resuming from more bytes than the partial holds is an error, not silent garbage."""
    (tmp_path / "x.part").write_bytes(b"abc")
    with pytest.raises(CacheError, match="shorter than"):
        PartialWriter(tmp_path / "x.part", 10)


# --- storing and sharing ---------------------------------------------------------------


async def test_get_stores_the_verified_file_by_its_sha512(tmp_path: Path) -> None:
    """A fetched file lands read-only at sha512/<2 hex>/<hex>; no partial is left."""
    data = os.urandom(100_000)
    pkg = planned(data)
    cache = PackageCache(tmp_path / "packages")
    path = await cache.get(pkg, Fetcher(data))
    assert path == tmp_path / "packages" / "sha512" / pkg.sha512[:2] / pkg.sha512
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o444
    assert list((tmp_path / "packages" / "partial").iterdir()) == []
    assert cache.path_if_cached(pkg.sha512) == path


async def test_wrong_bytes_never_land_in_the_cache(tmp_path: Path) -> None:
    """A fetch that delivers other bytes fails; nothing appears under sha512/, the partial goes."""
    pkg = planned(b"the real package")
    cache = PackageCache(tmp_path / "packages")
    with pytest.raises(CacheError, match="expected 16 bytes"):
        await cache.get(pkg, Fetcher(b"something else!!"))
    assert not (tmp_path / "packages" / "sha512").exists()
    assert cache.partial(pkg.sha512).size() == 0


async def test_concurrent_gets_share_one_fetch(tmp_path: Path) -> None:
    """Three callers wanting one package at once cause a single fetch and get the same file."""
    data = os.urandom(50_000)
    fetch = Fetcher(data, delay=0.2)
    cache = PackageCache(tmp_path / "packages")
    paths = await asyncio.gather(*(cache.get(planned(data), fetch) for _ in range(3)))
    assert fetch.calls == 1
    assert len(set(paths)) == 1


async def test_a_cancelled_waiter_does_not_stop_the_shared_download(tmp_path: Path) -> None:
    """One of two waiters gives up; the download goes on and the other gets the file."""
    data = os.urandom(50_000)
    fetch = Fetcher(data, delay=0.3)
    cache = PackageCache(tmp_path / "packages")
    quitter = asyncio.create_task(cache.get(planned(data), fetch))
    stayer = asyncio.create_task(cache.get(planned(data), fetch))
    await asyncio.sleep(0.05)
    quitter.cancel()
    assert (await stayer).read_bytes() == data
    assert quitter.cancelled()
    assert fetch.calls == 1


async def test_a_hit_does_not_fetch(tmp_path: Path) -> None:
    """A cached package is returned without calling the fetch at all."""
    data = os.urandom(10_000)
    cache = PackageCache(tmp_path / "packages")
    await cache.get(planned(data), Fetcher(data))
    again = Fetcher(data)
    await cache.get(planned(data), again)
    assert again.calls == 0


async def test_a_cached_file_of_the_wrong_size_is_fetched_again(tmp_path: Path) -> None:
    """A file tampered to another length is not served: it is replaced by a fresh fetch."""
    data = os.urandom(10_000)
    cache = PackageCache(tmp_path / "packages")
    store(cache, data, age=0)
    cache.file_path(hashlib.sha512(data).hexdigest()).write_bytes(data[:-1])
    fetch = Fetcher(data)
    assert (await cache.get(planned(data), fetch)).read_bytes() == data
    assert fetch.calls == 1


def test_names_that_are_not_a_sha512_are_refused(tmp_path: Path) -> None:
    """A plan cannot steer the cache outside its directory with a crafted 'sha512'."""
    cache = PackageCache(tmp_path / "packages")
    for bad in ("../../etc/passwd", "A" * 128, "0" * 127):
        with pytest.raises(CacheError, match="not a SHA-512"):
            cache.path_if_cached(bad)


def test_a_hit_marks_the_file_as_recently_used(tmp_path: Path) -> None:
    """path_if_cached touches the file: its mtime is the LRU record."""
    cache = PackageCache(tmp_path / "packages")
    sha512 = store(cache, b"package", age=3600)
    before = cache.file_path(sha512).stat().st_mtime
    cache.path_if_cached(sha512)
    assert cache.file_path(sha512).stat().st_mtime > before + 3000


# --- eviction --------------------------------------------------------------------------


def filled_cache(tmp_path: Path, files: int = 8) -> tuple[PackageCache, list[str]]:
    """A cache on a 10 kB disk holding `files` 1 kB files, the first the least recently used."""
    root = tmp_path / "packages"
    root.mkdir()
    cache = PackageCache(root, min_free_share=0.5, usage=SmallDisk(root, 10_000))
    shas = [store(cache, bytes([n]) * 1000, age=1000 - n) for n in range(files)]
    return cache, shas


def remaining(cache: PackageCache, shas: list[str]) -> list[int]:
    """Indexes of the files still cached."""
    return [n for n, sha in enumerate(shas) if cache.file_path(sha).exists()]


def test_evict_removes_least_recently_used_until_the_free_share_is_met(tmp_path: Path) -> None:
    """8 of 10 kB used, 50% must be free: the 3 oldest go, in LRU order, the rest stay."""
    cache, shas = filled_cache(tmp_path)
    assert cache.evict() == shas[:3]
    assert remaining(cache, shas) == [3, 4, 5, 6, 7]
    assert cache.evict() == []


def test_a_hit_saves_a_file_from_eviction(tmp_path: Path) -> None:
    """Using the oldest file makes it the newest: the next ones are evicted instead."""
    cache, shas = filled_cache(tmp_path)
    cache.path_if_cached(shas[0])
    assert cache.evict() == shas[1:4]


def test_leased_files_are_never_evicted(tmp_path: Path) -> None:
    """Files a running task holds stay even when they are the oldest; after the lease they go."""
    cache, shas = filled_cache(tmp_path)
    with cache.lease(shas[0]), cache.lease(shas[2]):
        assert cache.evict() == [shas[1], shas[3], shas[4]]
    assert cache.evict() == []  # the share is met now
    store(cache, b"x" * 3000, age=0)  # fill it again: now the released oldest goes first
    assert cache.evict()[0] == shas[0]


def test_evict_makes_room_for_a_download_about_to_start(tmp_path: Path) -> None:
    """`reserve` counts the incoming package as used already."""
    cache, shas = filled_cache(tmp_path, files=4)
    assert cache.evict() == []
    assert cache.evict(reserve=2000) == shas[:1]


def test_abandoned_partials_are_removed_fresh_ones_kept(tmp_path: Path) -> None:
    """A partial not touched for partial_max_age is cleaned up; a recent one stays for resume."""
    cache = PackageCache(tmp_path / "packages", partial_max_age=3600)
    old, fresh = cache.partial("a" * 128), cache.partial("b" * 128)
    for partial in (old, fresh):
        partial.path.parent.mkdir(parents=True, exist_ok=True)
        partial.path.write_bytes(b"half")
        partial.save_validator('"etag"', "https://mirror/x")
    stamp = time.time() - 7200
    os.utime(old.path, (stamp, stamp))
    cache.evict()
    assert not old.path.exists() and not old.meta.exists()
    assert fresh.path.exists() and fresh.validator() == '"etag"'


def litter(cache: PackageCache) -> dict[str, Path]:
    """What interrupted downloads leave, planted: an old partial, a half-written validator, an
    orphan validator, and a fresh partial (worth resuming)."""
    old, fresh = cache.partial("a" * 128), cache.partial("b" * 128)
    old.path.parent.mkdir(parents=True, exist_ok=True)
    for partial in (old, fresh):
        partial.path.write_bytes(b"half")
        partial.save_validator('"etag"', "https://server/x")
    stamp = time.time() - 2 * 86400
    os.utime(old.path, (stamp, stamp))
    cache.partial("c" * 128).temporary.write_text('{"valid')
    cache.partial("d" * 128).meta.write_text('{"validator": "x"}')
    return {
        "old": old.path,
        "old meta": old.meta,
        "temporary": cache.partial("c" * 128).temporary,
        "orphan meta": cache.partial("d" * 128).meta,
    }


def test_sweep_removes_what_interrupted_downloads_left_and_keeps_fresh_partials(tmp_path: Path) -> None:
    """At start: old partials, half-written and orphan validators go; a fresh partial stays for resume."""
    cache = PackageCache(tmp_path / "packages")
    planted = litter(cache)
    cache.sweep()
    assert [name for name, path in planted.items() if path.exists()] == []
    fresh = cache.partial("b" * 128)
    assert fresh.size() == 4 and fresh.validator() == '"etag"'


async def test_a_failed_download_removes_the_litter_and_keeps_its_own_partial(tmp_path: Path) -> None:
    """After a download fails, the cache's litter (and its own half-written validator) is gone, while
    the bytes it received stay for the resume."""
    cache = PackageCache(tmp_path / "packages")
    planted = litter(cache)
    data = os.urandom(3 * BUFFER_SIZE)

    async def cut(pkg: PlannedPackage, partial: Partial) -> Digest:
        partial.temporary.write_text("{")  # as if the disk filled while its validator was written
        await asyncio.to_thread(_write_half, partial.path, data)
        raise ConnectionResetError("the server went away")

    with pytest.raises(ConnectionResetError):
        await cache.get(planned(data), cut)
    assert [name for name, path in planted.items() if path.exists()] == []
    own = cache.partial(planned(data).sha512)
    assert own.size() >= BUFFER_SIZE and not own.temporary.exists()


def _write_half(path: Path, data: bytes) -> None:
    """Write the first half of ``data`` into a partial and stop, as a cut download does."""
    writer = PartialWriter(path)
    writer.write(data[: len(data) // 2])
    writer.close()


def test_min_free_share_must_be_a_share(tmp_path: Path) -> None:
    """A share outside [0, 1) is a configuration error naming the setting."""
    with pytest.raises(CacheError, match="min_free_share"):
        PackageCache(tmp_path, min_free_share=1.5)
