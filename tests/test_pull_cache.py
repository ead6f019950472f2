"""Pull acquisition and the package cache in front of the network: no download for what is
cached, one download for concurrent asks, leases until the task ends, and a cancel that
stops the download and leaves what it fetched to resume (real nginx mirrors, mutual TLS)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import msgspec
import pytest

from rigs.nginx_mirror import (  # the *_fixture imports provide the pki, mirrors and proxies fixtures
    FeedPackage,
    Mirrors,
    Pki,
    TcpProxy,
    mirrors_fixture,  # noqa: F401
    pki_fixture,  # noqa: F401
    proxies_fixture,  # noqa: F401
)
from tentacle.net.tls import client_context
from tentacle.packages.cache import PackageCache
from tentacle.packages.mirror_client import Timeouts
from tentacle.packages.pull import Acquirer
from tests.pull_helpers import FAST, PLAN, SIZE, AcquirerFactory, with_mirrors
from tests.pull_helpers import acquirers as acquirers
from tests.pull_helpers import package as package

pytestmark = pytest.mark.timeout(30)


# --- the cache in front of the network -------------------------------------------------


async def test_a_cached_package_needs_no_network(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
) -> None:
    """After one pull, nginx is stopped; a new acquirer on the same cache still gets the file."""
    mirror = mirrors.start(package.root)
    pkg = with_mirrors(package.planned, mirror.index_url)
    first = await acquirers()(PLAN, pkg)
    mirror.stop()
    second = acquirers()
    assert await second(PLAN, pkg) == first
    assert second.reports == {}


async def test_concurrent_acquisitions_of_one_package_download_once(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
) -> None:
    """Two tasks acquiring the same package at once cause one GET of it on the mirror."""
    mirror = mirrors.start(package.root)
    acquirer = acquirers()
    pkg = with_mirrors(package.planned, mirror.index_url)
    other = msgspec.structs.replace(PLAN, task_id="task-2")
    first, second = await asyncio.gather(acquirer(PLAN, pkg), acquirer(other, pkg))
    assert first == second
    assert len(mirror.requests(pkg.file_name, at_least=1)) == 1


async def test_acquired_packages_stay_leased_until_the_task_ends(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
) -> None:
    """Eviction under pressure skips a running task's package; after release it may go."""
    mirror = mirrors.start(package.root)
    acquirer = acquirers()
    path = await acquirer(PLAN, with_mirrors(package.planned, mirror.index_url))
    acquirer.cache.min_free_share = 0.999999  # any real disk is "full" by this measure
    assert acquirer.cache.evict() == []
    assert path.exists()
    acquirer.release(PLAN.task_id)
    assert acquirer.cache.evict() == [package.planned.sha512]
    assert not path.exists()


async def test_cancelling_an_acquisition_stops_the_download(
    package: FeedPackage,
    mirrors: Mirrors,
    proxies: list[TcpProxy],
    pki: Pki,
    tmp_path: Path,
) -> None:
    """Cancelled mid-stream, it ends at once, stops its threads, and a later pull resumes."""
    mirror = mirrors.start(package.root)
    crawler = await TcpProxy(mirror.port, stall_after=SIZE // 2).start()
    proxies.append(crawler)
    ctx = client_context(pki.ca, pki.client_cert, pki.client_key)
    slow = Timeouts(connect=2.0, stall=30.0, probe=2.0)
    acquirer = Acquirer(PackageCache(tmp_path / "cache"), ctx, timeouts=slow)
    earlier = set(threading.enumerate())  # other tests' threads are not this download's
    task = asyncio.create_task(acquirer(PLAN, with_mirrors(package.planned, crawler.index_url)))
    await asyncio.wait_for(crawler.stalled.wait(), 10)
    await asyncio.sleep(0.5)  # the reader drains the socket, then blocks waiting for more
    workers = [
        t for t in set(threading.enumerate()) - earlier if t.name.startswith(("tentacle-pull", "partial-"))
    ]
    assert workers, "the download runs no worker thread: the test no longer tests anything"
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 2
    for worker in workers:  # each has handed over its result; it may still be returning
        await asyncio.to_thread(worker.join, 2)
    assert not [worker.name for worker in workers if worker.is_alive()]
    partial = acquirer.cache.partial(package.planned.sha512)
    assert partial.size() > 0 and partial.validator() is not None
    await acquirer.close()
    again = Acquirer(PackageCache(tmp_path / "cache"), ctx, timeouts=FAST)
    path = await again(PLAN, with_mirrors(package.planned, mirror.index_url))
    assert path.read_bytes() == package.path.read_bytes()
    ranges = [line.range for line in mirror.requests(package.planned.file_name, at_least=2)]
    assert f"bytes={partial_size_before(again)}-" in ranges
    await again.close()


def partial_size_before(acquirer: Acquirer) -> int:
    """Where the acquirer's last download resumed from."""
    [report] = acquirer.reports.values()
    return report.attempts[-1].resumed_from
