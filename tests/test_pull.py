"""Pull acquisition against real nginx mirrors with mutual TLS (ssl_verify_client on).

Each mirror is nginx serving a static feed in the layout ``server-shim feed export``
writes; the tentacle presents a client certificate issued by the same CA. Misbehaving
mirrors are real too: a closed port, a second nginx serving other bytes under the same
name, and `TcpProxy` in front of nginx cutting or stalling the stream. What happened on
the wire is read back from nginx's access log.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import os
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from rigs.nginx_mirror import (  # the *_fixture imports provide the pki, mirrors and proxies fixtures
    FeedPackage,
    Mirrors,
    Pki,
    TcpProxy,
    mirrors_fixture,  # noqa: F401
    pki_fixture,  # noqa: F401
    proxies_fixture,  # noqa: F401
    write_feed,
)
from tentacle.net.tls import client_context
from tentacle.packages.cache import PackageCache
from tentacle.packages.download import AcquisitionError, package_path
from tentacle.packages.mirror_client import MirrorClient, Timeouts
from tentacle.packages.mirror_ranking import MirrorRanker, package_base_address
from tentacle.packages.pull import Acquirer
from tentacle.protocol.identity import thumbprint
from tentacle.protocol.plan import Plan, PlannedPackage

pytestmark = pytest.mark.timeout(30)

FAST = Timeouts(connect=2.0, stall=2.0, probe=2.0)
PLAN = Plan(
    task_id="task-1",
    kind="deployment",
    project_name="OctoPetShop",
    release_version="1.0.0",
    environment_name="Dev",
    machine_name="web-01",
    steps=(),
)
SIZE = 6 * 1024 * 1024


def zip_package(size: int) -> bytes:
    """A real .zip package about `size` bytes big (a readme and random, stored payload)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("readme.txt", b"OctoPetShop web")
        archive.writestr("bin/payload.bin", os.urandom(size))
    return buffer.getvalue()


@pytest.fixture
def package(tmp_path: Path) -> FeedPackage:
    """OctoPetShop.Web 1.0.0 as a .zip in a feed directory."""
    return write_feed(tmp_path / "feed", "OctoPetShop.Web", "1.0.0", zip_package(SIZE))


AcquirerFactory = Callable[..., Acquirer]


@pytest.fixture
async def acquirers(tmp_path: Path, pki: Pki) -> AsyncIterator[AcquirerFactory]:
    """Makes Acquirers with the tentacle's client certificate (or none); closes them at the end."""
    made: list[Acquirer] = []

    def make(
        *,
        cert: bool = True,
        local: Mapping[str, Sequence[str]] | None = None,
        server: str | None = None,
        cache: str = "cache",
        server_pins: frozenset[str] = frozenset(),
    ) -> Acquirer:
        ctx = client_context(pki.ca, pki.client_cert, pki.client_key) if cert else client_context(pki.ca)
        acquirer = Acquirer(
            PackageCache(tmp_path / cache / "packages"),
            ctx,
            local,
            server,
            ranker=patient(),
            timeouts=FAST,
            server_pins=server_pins,
        )
        made.append(acquirer)
        return acquirer

    yield make
    for acquirer in made:
        await acquirer.close()


def patient() -> MirrorRanker:
    """A ranker that waits for every probe (a loaded machine must not reorder what tests assert)."""
    return MirrorRanker(rank_wait=10.0)


def with_mirrors(pkg: PlannedPackage, *urls: str) -> PlannedPackage:
    """The plan entry with these mirror candidates."""
    return msgspec.structs.replace(pkg, mirrors=urls)


# --- pulling ---------------------------------------------------------------------------


async def test_pulls_from_nginx_with_the_client_certificate(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
) -> None:
    """The package arrives byte for byte, stored by SHA-512; nginx saw a verified client cert."""
    mirror = mirrors.start(package.root)
    acquirer = acquirers()
    path = await acquirer(PLAN, with_mirrors(package.planned, mirror.index_url))
    assert path.read_bytes() == package.path.read_bytes()
    assert path.name == package.planned.sha512
    [get] = mirror.requests(package.planned.file_name, at_least=1)
    assert (get.status, get.range, get.client_verify) == (200, "-", "SUCCESS")
    with zipfile.ZipFile(path) as archive:
        assert archive.read("readme.txt").startswith(b"OctoPetShop web")


async def test_a_mirror_refuses_a_tentacle_without_client_certificate(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
) -> None:
    """Without our certificate nginx answers 400; the error names the mirror and nginx's reason."""
    mirror = mirrors.start(package.root)
    acquirer = acquirers(cert=False)
    with pytest.raises(AcquisitionError) as caught:
        await acquirer(PLAN, with_mirrors(package.planned, mirror.index_url))
    message = caught.value.message
    assert message.startswith("OctoPetShop.Web 1.0.0: ")
    assert f"{mirror.index_url}: HTTP 400 (No required SSL certificate was sent)" in message
    assert mirror.requests(package.planned.file_name) == []


async def test_a_dead_mirror_is_failed_over_fast(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
) -> None:
    """The nearest mirror dies after ranking; the download moves to the next within seconds."""
    first = mirrors.start(package.root, "first")
    second = mirrors.start(package.root, "second")
    acquirer = acquirers(local={"mirrors": [first.index_url]})
    pkg = with_mirrors(package.planned, second.index_url)
    assert await acquirer.ranker.rank(
        acquirer.client, [first.index_url, second.index_url], [first.index_url]
    ) == [
        first.index_url,
        second.index_url,
    ]
    first.stop()  # a closed port now
    start = time.monotonic()
    path = await acquirer(PLAN, pkg)
    assert time.monotonic() - start < 5
    assert path.read_bytes() == package.path.read_bytes()
    report = acquirer.reports[pkg.sha512]
    assert [(a.mirror, a.error) for a in report.attempts] == [
        (first.index_url, "connection refused"),
        (second.index_url, None),
    ]


async def test_a_mirror_that_is_down_from_the_start_ranks_last(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
    dead_port: int,
) -> None:
    """A candidate whose probe is refused is not tried before a healthy one, even if preferred."""
    dead = f"https://127.0.0.1:{dead_port}/index.json"
    good = mirrors.start(package.root)
    acquirer = acquirers(local={"mirrors": [dead]})
    start = time.monotonic()
    await acquirer(PLAN, with_mirrors(package.planned, good.index_url))
    assert time.monotonic() - start < 5
    assert acquirer.reports[package.planned.sha512].mirror == good.index_url
    assert acquirer.ranker.latency(dead) is None


async def test_a_mirror_serving_corrupt_bytes_is_demoted(
    tmp_path: Path,
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
) -> None:
    """Other bytes under the same name: mismatch counted against that mirror, the next one used."""
    good_bytes = package.path.read_bytes()
    corrupt = bytearray(good_bytes)
    corrupt[len(corrupt) // 2] ^= 0xFF
    bad_feed = write_feed(tmp_path / "bad-feed", "OctoPetShop.Web", "1.0.0", bytes(corrupt))
    bad = mirrors.start(bad_feed.root, "bad")
    good = mirrors.start(package.root, "good")
    acquirer = acquirers(local={"mirrors": [bad.index_url]})  # preferred: tried first
    pkg = with_mirrors(package.planned, good.index_url)
    path = await acquirer(PLAN, pkg)
    assert path.read_bytes() == good_bytes
    attempts = acquirer.reports[pkg.sha512].attempts
    assert [(a.mirror, a.error) for a in attempts] == [
        (bad.index_url, "sha512 mismatch"),
        (good.index_url, None),
    ]
    assert acquirer.ranker.is_demoted(bad.index_url)
    ranked = await acquirer.ranker.rank(acquirer.client, [bad.index_url, good.index_url], [bad.index_url])
    assert ranked == [good.index_url, bad.index_url]


async def test_a_download_cut_half_way_resumes_with_range(
    package: FeedPackage,
    mirrors: Mirrors,
    proxies: list[TcpProxy],
    acquirers: AcquirerFactory,
) -> None:
    """The stream is cut at half; the retry asks Range/If-Range and fetches only the rest."""
    mirror = mirrors.start(package.root)
    proxy = await TcpProxy(mirror.port, cut_after=SIZE // 2).start()
    proxies.append(proxy)
    acquirer = acquirers()
    pkg = with_mirrors(package.planned, proxy.index_url)
    path = await acquirer(PLAN, pkg)
    assert path.read_bytes() == package.path.read_bytes()
    first, second = mirror.requests(pkg.file_name, at_least=2)
    assert (first.status, first.range) == (200, "-")
    assert second.status == 206 and second.range.startswith("bytes=") and second.range != "bytes=0-"
    assert second.if_range.startswith('"')  # nginx's strong ETag of the first answer
    resumed_from = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert second.body_bytes == pkg.size - resumed_from
    assert proxy.cuts == 1
    assert proxy.downstream < 1.5 * pkg.size
    report = acquirer.reports[pkg.sha512]
    assert report.attempts[0].error is not None and report.attempts[0].error.startswith("cut after")
    assert report.received < 1.5 * pkg.size


async def test_a_crawling_mirror_is_failed_over_and_the_next_resumes(
    package: FeedPackage,
    mirrors: Mirrors,
    proxies: list[TcpProxy],
    acquirers: AcquirerFactory,
) -> None:
    """A mirror that stops sending is dropped after the stall timeout; the next one resumes."""
    mirror = mirrors.start(package.root)
    crawler = await TcpProxy(mirror.port, stall_after=SIZE // 3).start()
    proxies.append(crawler)
    acquirer = acquirers(local={"mirrors": [crawler.index_url]})
    pkg = with_mirrors(package.planned, mirror.index_url)
    start = time.monotonic()
    path = await acquirer(PLAN, pkg)
    assert time.monotonic() - start < 5
    assert path.read_bytes() == package.path.read_bytes()
    stalled, finished = acquirer.reports[pkg.sha512].attempts
    assert stalled.mirror == crawler.index_url and stalled.error is not None
    assert "stalled: no bytes for 2 s" in stalled.error
    assert finished.mirror == mirror.index_url and finished.resumed_from > 0
    ranges = [line.range for line in mirror.requests(pkg.file_name, at_least=2)]
    assert f"bytes={finished.resumed_from}-" in ranges


async def test_a_partial_left_by_a_crash_is_resumed(
    package: FeedPackage,
    mirrors: Mirrors,
    pki: Pki,
    acquirers: AcquirerFactory,
) -> None:
    """Half a file and its ETag in partial/ (as a crash leaves them): only the rest is fetched."""
    mirror = mirrors.start(package.root)
    data = package.path.read_bytes()
    acquirer = acquirers()
    partial = acquirer.cache.partial(package.planned.sha512)
    partial.path.parent.mkdir(parents=True)
    half = len(data) // 2 + 1
    partial.path.write_bytes(data[:half])
    etag = head_etag(mirror.port, pki, package)
    partial.save_validator(etag, "https://127.0.0.1/before-the-crash")
    path = await acquirer(PLAN, with_mirrors(package.planned, mirror.index_url))
    assert path.read_bytes() == data
    [get] = [line for line in mirror.requests(package.planned.file_name, at_least=2) if line.method == "GET"]
    assert (get.status, get.range, get.if_range, get.body_bytes) == (
        206,
        f"bytes={half}-",
        etag,
        len(data) - half,
    )
    assert not partial.path.exists() and not partial.meta.exists()


def head_etag(port: int, pki: Pki, package: FeedPackage) -> str:
    """The ETag nginx gives the package file (a HEAD request with the client certificate)."""
    ctx = client_context(pki.ca, pki.client_cert, pki.client_key)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("HEAD", "/flatcontainer/" + package_path(package.planned))
        etag = conn.getresponse().getheader("ETag")
    finally:
        conn.close()
    assert etag is not None
    return etag


async def test_a_complete_partial_is_verified_and_stored_without_network(
    package: FeedPackage,
    acquirers: AcquirerFactory,
    dead_port: int,
) -> None:
    """A crash after the last byte but before the rename: the partial is checked and used."""
    acquirer = acquirers()
    partial = acquirer.cache.partial(package.planned.sha512)
    partial.path.parent.mkdir(parents=True)
    partial.path.write_bytes(package.path.read_bytes())
    dead = f"https://127.0.0.1:{dead_port}/index.json"
    path = await acquirer(PLAN, with_mirrors(package.planned, dead))
    assert path.read_bytes() == package.path.read_bytes()


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


# --- sources, ranking and errors -------------------------------------------------------


async def test_push_fetches_from_the_server_feed(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
) -> None:
    """A pushed package is fetched from the server's feed URL over the same mutual TLS."""
    server_feed = mirrors.start(package.root, "server")
    acquirer = acquirers(server=server_feed.index_url)
    pkg = msgspec.structs.replace(package.planned, acquisition="push", feed="builtin")
    path = await acquirer(PLAN, pkg)
    assert path.read_bytes() == package.path.read_bytes()
    assert len(server_feed.requests(pkg.file_name, at_least=1)) == 1


async def test_the_server_feed_is_pinned_so_another_ca_certificate_cannot_pose_as_it(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
    pki: Pki,
) -> None:
    """With the server's thumbprint pinned, a host holding another certificate of the CA is refused."""
    impostor = mirrors.start(package.root, "server")  # a CA-signed certificate, not the server's
    pinned = frozenset({"ab" * 32})
    acquirer = acquirers(server=impostor.index_url, server_pins=pinned)
    pkg = msgspec.structs.replace(package.planned, acquisition="push", feed="builtin")
    with pytest.raises(AcquisitionError, match="not the pinned server: expected abab"):
        await acquirer(PLAN, pkg)
    assert impostor.requests(pkg.file_name) == []
    real = thumbprint(x509.load_pem_x509_certificate(pki.server_cert.read_bytes()).public_bytes(Encoding.DER))
    trusted = acquirers(server=impostor.index_url, server_pins=frozenset({real}), cache="other")
    assert (await trusted(PLAN, pkg)).read_bytes() == package.path.read_bytes()


async def test_every_failure_is_named_with_its_mirror(
    tmp_path: Path,
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
    dead_port: int,
) -> None:
    """When no mirror delivers, the error lists each one tried with its own reason."""
    dead = f"https://127.0.0.1:{dead_port}/index.json"
    elsewhere = write_feed(tmp_path / "other", "Other.Package", "2.0.0", b"other")
    lacking = mirrors.start(elsewhere.root)
    acquirer = acquirers()
    with pytest.raises(AcquisitionError) as caught:
        await acquirer(PLAN, with_mirrors(package.planned, dead, lacking.index_url))
    assert caught.value.message == (
        f"OctoPetShop.Web 1.0.0: {lacking.index_url}: HTTP 404 (Not Found); {dead}: connection refused"
    )
    assert caught.value.retryable
    assert not acquirer.cache.partial(package.planned.sha512).path.exists()


async def test_latency_is_measured_once_and_remembered(
    package: FeedPackage,
    mirrors: Mirrors,
    pki: Pki,
) -> None:
    """Ranking twice within the ttl probes each mirror's service index only once."""
    near = mirrors.start(package.root, "near")
    client = MirrorClient(client_context(pki.ca, pki.client_cert, pki.client_key), FAST)
    ranker = patient()
    for _ in range(2):
        assert await ranker.rank(client, [near.index_url]) == [near.index_url]
    assert len(near.requests("/index.json", at_least=1)) == 1
    latency = ranker.latency(near.index_url)
    assert latency is not None and 0 < latency < 2


def test_service_index_base_address_is_resolved_against_the_index_url() -> None:
    """A relative @id joins the index URL; an absolute one is kept; a slash is ensured."""
    index = "https://mirror:8443/nuget/v3/index.json"
    relative = {"resources": [{"@id": "flatcontainer/", "@type": "PackageBaseAddress/3.0.0"}]}
    absolute = {"resources": [{"@id": "https://cdn/flat", "@type": "PackageBaseAddress/3.0.0"}]}
    assert package_base_address(index, relative) == "https://mirror:8443/nuget/v3/flatcontainer/"
    assert package_base_address(index, absolute) == "https://cdn/flat/"


def test_package_path_uses_the_normalized_lowercase_version() -> None:
    """'1.0' becomes '1.0.0' and ids are lowercased, as a NuGet flat container lays files out."""
    pkg = PlannedPackage(
        id="OctoPetShop.Web", version="1.0-Beta", sha512="0" * 128, size=1, file_name="x y.zip"
    )
    assert package_path(pkg) == "octopetshop.web/1.0.0-beta/x%20y.zip"


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


def test_the_test_package_is_what_the_plan_says(package: FeedPackage) -> None:
    """The fixture's plan entry matches its file (so the other tests prove what they claim)."""
    data = package.path.read_bytes()
    assert package.planned.sha512 == hashlib.sha512(data).hexdigest()
    assert package.planned.size == len(data)
