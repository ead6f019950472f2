"""Helpers for project and release tests: a live server that counts requests with one client
session to it (`Shim`), the example project released, and error bodies read."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from server_shim import server_config
from tentacle.common.paths import InstancePaths
from tentacle.net.tls import client_context
from tests.conftest import CountingServer, LiveServer, start_server, stop_server
from tests.hostile import replaced
from tests.process_helpers import example

MiB = 1024 * 1024
PROJECT = "OctoPetShop"
WEB, DB, TOOLS = "OctoPetShop.Web", "OctoPetShop.Db", "OctoPetShop.Tools"


@dataclass
class Shim:
    """A live counting server and one client session to it."""

    live: LiveServer
    session: aiohttp.ClientSession
    ssl: ssl.SSLContext

    @property
    def server(self) -> CountingServer:
        """The server under test."""
        assert isinstance(self.live.server, CountingServer)
        return self.live.server

    async def send(
        self, method: str, path: str, body: Any = None, *, data: bytes | AsyncIterator[bytes] | None = None
    ) -> tuple[int, Any]:
        """One request (``body`` as JSON, or raw ``data``); returns (status, decoded answer)."""
        headers = {"X-Api-Key": self.live.admin_key, "Content-Type": "application/json"}
        payload = data if data is not None else json.dumps(body).encode()
        async with self.session.request(
            method, self.live.url + path, data=payload, headers=headers, ssl=self.ssl
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def apply(self, doc: Any, name: str = PROJECT) -> tuple[int, Any]:
        """PUT a process document."""
        return await self.send("PUT", f"/api/Default/projects/{name}/v1", doc)

    async def release(self, body: Any) -> tuple[int, Any]:
        """POST releases/create/v1."""
        return await self.send("POST", "/api/Default/releases/create/v1", body)

    async def add_package(self, package_id: str, version: str) -> None:
        """A package row in the built-in feed (the feed's push code is tested elsewhere)."""
        sha = hashlib.sha512(f"{package_id}@{version}".encode()).hexdigest()
        row = (
            package_id.lower(),
            version,
            package_id,
            sha,
            1234,
            f"{package_id}.{version}.nupkg",
            time.time(),
        )
        await self.server.db.run(
            lambda conn: conn.execute(
                "INSERT INTO packages (lower_id, version, id, sha512, size, file_name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        )

    async def counts(self) -> tuple[int, int]:
        """How many projects and releases exist."""

        def count(conn: Any) -> tuple[int, int]:
            projects = conn.execute("SELECT count(*) FROM projects").fetchone()[0]
            return projects, conn.execute("SELECT count(*) FROM releases").fetchone()[0]

        return await self.server.db.run(count)


@pytest.fixture
async def shim(server_home: InstancePaths) -> AsyncIterator[Shim]:
    """A running server that counts requests, with a client session."""
    live = await start_server(server_home, kind=CountingServer)
    async with aiohttp.ClientSession() as session:
        # One context for every request: connections are pooled per context.
        yield Shim(live, session, client_context(server_home.config / server_config.CA_CERT))
    await stop_server(live)


@pytest.fixture
async def released(shim: Shim) -> Shim:
    """The example project applied and every package it uses in the feed."""
    assert (await shim.apply(example()))[0] == 201
    for package_id, version in [
        (WEB, "1.0.0"),
        (WEB, "1.10.0"),
        (WEB, "1.9.0"),
        (DB, "2.0.0"),
        (TOOLS, "0.1.0"),
    ]:
        await shim.add_package(package_id, version)
    return shim


def error_of(answer: Any) -> str:
    """The message of an error body (asserting its shape)."""
    assert set(answer) == {"error", "ErrorMessage", "Errors"}
    assert set(answer["error"]) == {"code", "message", "details"}
    message = answer["error"]["message"]
    assert isinstance(message, str) and answer["ErrorMessage"] == message
    assert all(isinstance(problem, str) for problem in answer["Errors"])
    assert message
    return message


def _set(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The example document with the value at ``path`` set (added when absent)."""
    doc: dict[str, Any] = replaced(example(), path, value)
    return doc
