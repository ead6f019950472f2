"""Pull acquisition's mirrors: every failure named with its mirror, latency measured once,
the feed's addresses and paths, and the test package itself (real nginx mirrors, mutual TLS)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rigs.nginx_mirror import (  # the *_fixture imports provide the pki and mirrors fixtures
    FeedPackage,
    Mirrors,
    Pki,
    mirrors_fixture,  # noqa: F401
    pki_fixture,  # noqa: F401
    write_feed,
)
from tentacle.net.tls import client_context
from tentacle.packages.download import AcquisitionError, package_path
from tentacle.packages.mirror_client import MirrorClient
from tentacle.packages.mirror_ranking import package_base_address
from tentacle.protocol.plan import PlannedPackage
from tests.pull_helpers import FAST, PLAN, AcquirerFactory, patient, with_mirrors
from tests.pull_helpers import acquirers as acquirers
from tests.pull_helpers import package as package

pytestmark = pytest.mark.timeout(30)


async def test_every_failure_is_named_with_its_mirror(
    tmp_path: Path,
    package: FeedPackage,
    mirrors: Mirrors,
    acquirers: AcquirerFactory,
    dead_port: int,
) -> None:
    """When no mirror delivers, the error lists each one tried with its own reason; it is retryable
    only when every mirror's failure may pass (a 404 will not)."""
    dead = f"https://127.0.0.1:{dead_port}/index.json"
    elsewhere = write_feed(tmp_path / "other", "Other.Package", "2.0.0", b"other")
    lacking = mirrors.start(elsewhere.root)
    acquirer = acquirers()
    with pytest.raises(AcquisitionError) as caught:
        await acquirer(PLAN, with_mirrors(package.planned, dead, lacking.index_url))
    assert caught.value.message == (
        f"OctoPetShop.Web 1.0.0: {lacking.index_url}: HTTP 404 (Not Found); {dead}: connection refused"
    )
    assert not caught.value.retryable
    assert not acquirer.cache.partial(package.planned.sha512).path.exists()
    with pytest.raises(AcquisitionError) as caught:
        await acquirer(PLAN, with_mirrors(package.planned, dead))
    assert caught.value.message == f"OctoPetShop.Web 1.0.0: {dead}: connection refused"
    assert caught.value.retryable


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


def test_the_test_package_is_what_the_plan_says(package: FeedPackage) -> None:
    """The fixture's plan entry matches its file (so the other tests prove what they claim)."""
    data = package.path.read_bytes()
    assert package.planned.sha512 == hashlib.sha512(data).hexdigest()
    assert package.planned.size == len(data)
