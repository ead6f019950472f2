"""The push receiver of a listening tentacle: only planned bytes, verified, resumable.

A real aiohttp server on 127.0.0.1 runs the receiver's routes over a real cache folder (the
TLS and pinning in front of them are the listening transport's, tested in test_trust).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestServer

from tentacle.packages.cache import PackageCache
from tentacle.packages.receive import PackageReceiver
from tentacle.protocol.plan import PlannedPackage
from tentacle.protocol.push_wire import ENCODING, OFFSET, PARTIAL_LENGTH

DATA = os.urandom(300_000) + b"text " * 100_000
PKG = PlannedPackage(
    id="Web",
    version="1.0.0",
    sha512=hashlib.sha512(DATA).hexdigest(),
    size=len(DATA),
    file_name="web.1.0.0.zip",
)
TASK = "T-1"


class Rig:
    def __init__(self, server: TestServer, session: aiohttp.ClientSession, cache: PackageCache) -> None:
        self.server, self.session, self.cache = server, session, cache

    def url(self, task: str = TASK, sha512: str = PKG.sha512) -> str:
        return str(self.server.make_url(f"/packages/v1/{task}/{sha512}"))

    async def put(self, body: bytes, **headers: str) -> tuple[int, dict[str, str], str]:
        async with self.session.put(self.url(), data=body, headers=headers) as answer:
            return answer.status, dict(answer.headers), await answer.text()

    async def head(self) -> tuple[int, dict[str, str]]:
        async with self.session.head(self.url()) as answer:
            return answer.status, dict(answer.headers)

    def cached(self) -> list[Path]:
        return [p for p in (self.cache.root / "sha512").rglob("*") if p.is_file()]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    cache = PackageCache(tmp_path / "cache")
    planned = {(TASK, PKG.sha512): PKG}
    app = web.Application()
    PackageReceiver(lambda: cache, lambda task, sha: planned.get((task, sha))).add_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Rig(server, session, cache)
    await server.close()


async def test_a_planned_package_lands_verified_and_head_then_says_so(rig: Rig) -> None:
    assert (await rig.head())[0] == 404
    status, _, _ = await rig.put(DATA)
    assert status == 200
    [path] = rig.cached()
    assert path.read_bytes() == DATA
    assert (await rig.head())[0] == 200


async def test_a_zstd_body_is_decoded(rig: Rig) -> None:
    status, _, text = await rig.put(zstandard.ZstdCompressor().compress(DATA), **{ENCODING: "zstd"})
    assert status == 200, text
    assert rig.cached()[0].read_bytes() == DATA


async def test_a_resumed_put_appends_to_what_arrived(rig: Rig) -> None:
    half = 150_000
    partial = rig.cache.partial(PKG.sha512)
    partial.path.parent.mkdir(parents=True)
    partial.path.write_bytes(DATA[:half])  # what a cut push left
    status, headers = await rig.head()
    assert status == 404 and headers[PARTIAL_LENGTH] == str(half)
    status, _, text = await rig.put(DATA[half:], **{OFFSET: str(half)})
    assert status == 200, text
    assert rig.cached()[0].read_bytes() == DATA


async def test_an_offset_that_is_not_the_partials_end_is_409_with_the_right_one(rig: Rig) -> None:
    status, headers, text = await rig.put(DATA[10:], **{OFFSET: "10"})
    assert status == 409 and headers[PARTIAL_LENGTH] == "0", text
    assert not rig.cached()


@pytest.mark.parametrize(
    ("task", "sha512", "status"),
    [("T-other", PKG.sha512, 404), (TASK, "0" * 128, 404), (TASK, "not-a-hash", 400), (TASK, "A" * 128, 400)],
)
async def test_only_a_package_of_a_known_task_may_be_pushed(
    rig: Rig, task: str, sha512: str, status: int
) -> None:
    async with rig.session.put(rig.url(task, sha512), data=DATA) as answer:
        assert answer.status == status
        assert "error" in await answer.json()
    assert not rig.cached()


@pytest.mark.parametrize(
    ("body", "headers", "why"),
    [
        (DATA + b"x", {}, "past the planned size"),
        (zstandard.ZstdCompressor().compress(DATA + b"more"), {ENCODING: "zstd"}, "past the planned size"),
        (b"\x28\xb5\x2f\xfd" + os.urandom(1000), {ENCODING: "zstd"}, "not a zstd stream"),
        (DATA[:-1] + b"!", {}, "expected"),
        (DATA[:-5], {}, "expected"),
    ],
    ids=["too-long", "zstd-too-long", "bad-zstd", "wrong-bytes", "too-short"],
)
async def test_bytes_that_are_not_the_plans_are_refused_and_not_cached(
    rig: Rig, body: bytes, headers: dict[str, str], why: str
) -> None:
    status, _, text = await rig.put(body, **headers)
    assert status == 422 and why in text, text
    assert not rig.cached()
    assert rig.cache.partial(PKG.sha512).size() == 0  # nothing kept to resume from


@pytest.mark.parametrize(
    ("headers", "why"), [({ENCODING: "gzip"}, "identity or zstd"), ({OFFSET: "x"}, "integer")]
)
async def test_bad_headers_are_400(rig: Rig, headers: dict[str, str], why: str) -> None:
    status, _, text = await rig.put(DATA, **headers)
    assert status == 400 and why in text, text
