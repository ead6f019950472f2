"""Helpers for pull acquisition tests: the test package, the plan, timeouts, and acquirers that
talk to real nginx mirrors with the tentacle's client certificate."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import msgspec
import pytest

from rigs.nginx_mirror import FeedPackage, Pki, write_feed
from tentacle.net.tls import client_context
from tentacle.packages.cache import PackageCache
from tentacle.packages.mirror_client import Timeouts
from tentacle.packages.mirror_ranking import MirrorRanker
from tentacle.packages.pull import Acquirer
from tentacle.protocol.backoff import Backoff
from tentacle.protocol.plan import Plan, PlannedPackage

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
        backoff: Backoff | None = None,
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
            backoff=backoff,
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
