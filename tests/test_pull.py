"""Pull acquisition against real nginx mirrors with mutual TLS (ssl_verify_client on).

Each mirror is nginx serving a static feed in the layout ``server-shim feed export``
writes; the tentacle presents a client certificate issued by the same CA. Misbehaving
mirrors are real too: a closed port, a second nginx serving other bytes under the same
name, and `TcpProxy` in front of nginx cutting or stalling the stream. What happened on
the wire is read back from nginx's access log.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from rigs.faultproxy import FaultProxy
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
from tentacle.packages.download import AcquisitionError, package_path
from tentacle.protocol.backoff import Backoff
from tentacle.protocol.identity import thumbprint
from tests.pull_helpers import PLAN, SIZE, AcquirerFactory, with_mirrors
from tests.pull_helpers import acquirers as acquirers
from tests.pull_helpers import package as package

pytestmark = pytest.mark.timeout(30)


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


# --- sources -----------------------------------------------------------------------


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


async def test_a_fetch_from_the_server_is_tried_again_until_the_server_answers(
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
    caplog: pytest.LogCaptureFixture,
    dead_port: int,
) -> None:
    """While the server's feed cannot be reached (a restart), a pushed package's fetch is tried again
    on the backoff schedule instead of failing; once the server is back it completes. A 404 is final."""
    server_feed = mirrors.start(package.root, "server")
    pkg = msgspec.structs.replace(package.planned, acquisition="push", feed="builtin")
    async with FaultProxy("127.0.0.1", dead_port) as front:  # nothing behind it: the server is down
        quick = Backoff(base=0.05, cap=0.2)
        acquirer = acquirers(server=f"https://{front.url_host}/index.json", backoff=quick)
        with caplog.at_level(logging.WARNING, logger="tentacle.packages.pull"):
            fetching = asyncio.create_task(acquirer(PLAN, pkg))
            await until(lambda: retries(caplog) >= 3, 10)
            assert not fetching.done()
            front.retarget("127.0.0.1", server_feed.port)  # the server is back
            path = await asyncio.wait_for(fetching, 20)
    assert path.read_bytes() == package.path.read_bytes()
    caplog.clear()
    elsewhere = write_feed(package.root.parent / "other", "Other.Package", "2.0.0", b"other")
    lacking = mirrors.start(elsewhere.root, "lacking")
    with caplog.at_level(logging.WARNING, logger="tentacle.packages.pull"), pytest.raises(AcquisitionError):
        await acquirers(server=lacking.index_url, backoff=quick, cache="other")(PLAN, pkg)
    assert retries(caplog) == 0


def retries(caplog: pytest.LogCaptureFixture) -> int:
    """How many times a fetch was put off to be tried again."""
    return sum("package.fetch_retry" in record.getMessage() for record in caplog.records)


async def until(check: Callable[[], bool], timeout: float) -> None:
    """Wait (polling every 20 ms) until ``check()`` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(0.02)


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
