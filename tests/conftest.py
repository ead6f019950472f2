"""Shared fixtures: a real server and real tentacles on 127.0.0.1, in this process.

Everything speaks real mutual TLS over real sockets; only the process boundary is
skipped here (tests/test_processes.py runs the real commands as subprocesses).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server_shim import server_config
from server_shim.app import Server
from server_shim.cli import main as server_cli
from server_shim.server_config import Checks
from tentacle.agent import registration
from tentacle.agent.agent_config import HeartbeatConfig, ListenConfig
from tentacle.agent.daemon import Agent
from tentacle.common.paths import InstancePaths, resolve
from tentacle.net.tls import client_context
from tests.real_fleet import RealFleet


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def ws_status(url: str, ctx: ssl.SSLContext) -> int:
    """Open a websocket; return 101 when accepted, else the refusal's HTTP status."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, ssl=ctx):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.1) -> float:
    """Wait until `check()` is true; returns the seconds it took, fails after `timeout`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(every)
    return loop.time() - start


@dataclass
class LiveServer:
    """A running server and what a test needs to talk to it."""

    server: Server
    paths: InstancePaths
    checks: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.bound.api}"

    @property
    def thumbprint(self) -> str:
        return self.server.settings().server_thumbprint

    @property
    def admin_key(self) -> str:
        return (self.paths.config / server_config.ADMIN_KEY_FILE).read_text().strip()

    def token(self, uses: int = 1, expires: str = "1h") -> str:
        from server_shim.store import accounts

        return self.server.db.sync(accounts.create_token, uses, accounts.parse_duration(expires))

    async def api(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        """One API call as an operator; returns (status, JSON body)."""
        ctx = client_context(self.paths.config / server_config.CA_CERT)
        headers = {"X-Api-Key": self.admin_key if key is None else key}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, json=body, headers=headers, ssl=ctx) as resp,
        ):
            return resp.status, await resp.json(content_type=None)

    async def machines(self) -> dict[str, dict[str, Any]]:
        """The machines list, by name."""
        status, body = await self.api("GET", "/api/Default/machines/v1")
        assert status == 200, body
        return {m["name"]: m for m in body["items"]}


@pytest.fixture
def server_home(tmp_path: Path) -> InstancePaths:
    """An initialised server instance (CA, certificate, database, admin key)."""
    home = tmp_path / "server"
    argv = ["--home", str(home), "init", "--public-url", "https://127.0.0.1:8443"]
    assert server_cli.main([*argv, "--listen", "127.0.0.1:0", "--polling-listen", "127.0.0.1:0"]) == 0
    return resolve("server-shim", str(home))


async def start_server(paths: InstancePaths, api_port: int = 0, polling_port: int = 0) -> LiveServer:
    """Start a server on 127.0.0.1 with fast listening checks."""
    config = server_config.load(paths).with_changes(
        checks=Checks(interval=0.5, timeout=2.0),
        listen=server_config.Endpoint("127.0.0.1", api_port),
        polling=server_config.Endpoint("127.0.0.1", polling_port),
    )
    server = Server(paths, config)
    await server.start()
    return LiveServer(server, paths, asyncio.create_task(server.fleet.check_loop()))


async def stop_server(live: LiveServer) -> None:
    """Stop a server started by `start_server`."""
    live.checks.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await live.checks
    await live.server.close()


@pytest.fixture
async def live_server(server_home: InstancePaths) -> AsyncIterator[LiveServer]:
    """A running server."""
    live = await start_server(server_home)
    yield live
    await stop_server(live)


@dataclass
class Tentacles:
    """Registers and runs tentacles against a live server; stops them at teardown."""

    server: LiveServer
    root: Path
    running: dict[str, tuple[Agent, asyncio.Task[None]]] = field(default_factory=dict)

    async def register(
        self, name: str, mode: str, roles: tuple[str, ...] = ("web",), environment: str = "Dev"
    ) -> InstancePaths:
        paths = resolve("tentacle", str(self.root / name))
        listen = ListenConfig(host="127.0.0.1", port=free_port()) if mode == "listening" else None
        reg = registration.Registration(
            server=self.server.url,
            token=self.server.token(),
            server_thumbprint=self.server.thumbprint,
            name=name,
            environments=(environment,),
            roles=roles,
            listen=listen,
        )
        await registration.register(paths, reg)
        return paths

    async def start(self, name: str) -> Agent:
        from tentacle.agent import agent_config as config

        paths = resolve("tentacle", str(self.root / name))
        conf = config.load(paths).with_changes(heartbeat=HeartbeatConfig(interval=2.0))
        agent = Agent(paths, conf)
        task = asyncio.create_task(agent.serve())
        self.running[name] = (agent, task)
        started = asyncio.create_task(agent.started.wait())
        await asyncio.wait({started, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises why it did not start
        return agent

    async def stop(self, name: str) -> None:
        agent, task = self.running.pop(name)
        agent.stop.set()
        await asyncio.wait_for(task, 15)

    async def stop_all(self) -> None:
        for name in list(self.running):
            await self.stop(name)


@pytest.fixture
async def tentacles(live_server: LiveServer, tmp_path: Path) -> AsyncIterator[Tentacles]:
    """Register and run tentacles; all are stopped at the end of the test."""
    fleet = Tentacles(live_server, tmp_path / "tentacles")
    yield fleet
    await fleet.stop_all()


@pytest.fixture(params=["listening", "polling"])
def mode(request: pytest.FixtureRequest) -> str:
    """Every transport test runs in both modes."""
    return str(request.param)


@pytest.fixture
def real_fleet(tmp_path: Path) -> Iterator[RealFleet]:
    """A `server-shim run` process, and tentacle processes to register; all stopped at the end."""
    fleet = RealFleet(tmp_path)
    fleet.start_server()
    try:
        yield fleet
    finally:
        fleet.close()
