"""Shared fixtures: a real server and real tentacles on 127.0.0.1, in this process.

Everything speaks real mutual TLS over real sockets; only the process boundary is
skipped here (tests/test_processes.py runs the real commands as subprocesses).
Every test loop runs in asyncio's debug mode, and a test fails when the project's own
code blocked a loop for over 100 ms meanwhile (tests/loop_watch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from rigs.instances import python
from rigs.pgcluster import Cluster
from server_shim import server_config
from server_shim.app import Server
from server_shim.cli import main as server_cli
from server_shim.server_config import Checks
from tentacle.agent import agent_config, registration
from tentacle.agent.agent_config import HeartbeatConfig, ListenConfig
from tentacle.agent.daemon import Agent
from tentacle.common.paths import InstancePaths, resolve
from tentacle.net.tls import client_context
from tests.loop_watch import LoopWatch, SlowCallbackLog
from tests.real_fleet import RealFleet

WATCH = LoopWatch()


BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--db-backend postgresql`` runs every test that uses the server's database on PostgreSQL."""
    parser.addoption(
        "--db-backend",
        choices=BACKENDS,
        default="sqlite",
        help="the database the server tests use (postgresql: a throwaway cluster, and only the"
        " tests that use a database are collected)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On PostgreSQL, run only the tests that use the server's database (the rest ran on SQLite)."""
    if config.getoption("--db-backend") != "postgresql":
        return
    uses = ("database_url", "module_database_url")
    keep = [item for item in items if any(n in getattr(item, "fixturenames", ()) for n in uses)]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def pytest_configure(config: pytest.Config) -> None:
    """asyncio's slow-callback log lines go to the watch too."""
    logging.getLogger("asyncio").addHandler(SlowCallbackLog(WATCH))
    # Debug mode records where every callback, future and task was created, ten frames deep:
    # one frame names the place, and the other nine cost the API fuzzing a third of its time.
    asyncio.constants.DEBUG_STACK_DEPTH = 1  # type: ignore[misc]  # Final to typeshed; read at each use


def _watched_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    WATCH.attach(loop)
    return loop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """pytest-asyncio's loops come from here: each one is watched for blocking callbacks."""
    return {"watched": _watched_loop}


@pytest.fixture(autouse=True)
def no_blocking_callbacks() -> Iterator[None]:
    """Fail the test when the project's code blocked an event loop for over 100 ms during it."""
    yield
    blocked = WATCH.take()
    if blocked:
        lines = "\n".join(f"  {each}" for each in blocked)
        pytest.fail(f"the project's code blocked the event loop:\n{lines}", pytrace=False)


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections: bound by this test, so that nobody else
    can take it meanwhile, and not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def ws_status(url: str, ctx: ssl.SSLContext) -> int:
    """Open a websocket; return 101 when accepted, else the refusal's HTTP status."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, ssl=ctx):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    every: float = 0.1,
    what: Callable[[], object] | None = None,
) -> float:
    """Wait until `check()` (plain or awaitable) is true; returns the seconds it took.

    Fails after `timeout`, saying `what()` when given (the state the wait ended in).
    The one waiting loop of the async tests (rigs.instances.wait_until is the blocking one).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return loop.time() - start
        if loop.time() - start > timeout:
            pytest.fail(f"not within {timeout} s" + (f": {what()}" if what is not None else ""))
        await asyncio.sleep(every)


async def api_call(url: str, ca: Path, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API call with an API key, trusting the server's CA; returns (status, JSON body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url + path, json=body, headers={"X-Api-Key": key}, ssl=client_context(ca)
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def tentacle_files(paths: InstancePaths) -> tuple[Path, Path, Path]:
    """A registered tentacle's certificate, key and server CA."""
    names = (agent_config.CERT_FILE, agent_config.KEY_FILE, agent_config.SERVER_CA_FILE)
    cert, key, ca = (agent_config.file(paths, name) for name in names)
    return cert, key, ca


def tentacle_context(paths: InstancePaths) -> ssl.SSLContext:
    """A client context presenting a registered tentacle's certificate, trusting the server CA."""
    cert, key, ca = tentacle_files(paths)
    return client_context(ca, cert, key)


@dataclass(frozen=True)
class Identity:
    """A key and a certificate signed by the server's CA, as files, and its thumbprint."""

    cert: Path
    key: Path
    thumbprint: str


def daemon(module: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m MODULE ARGS`` in the background (a test may kill it), output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(python(module, *args), stdout=out, stderr=subprocess.STDOUT)


def run_tentacle(home: Path, log: Path) -> subprocess.Popen[bytes]:
    """`tentacle --home HOME run` as its own process, output appended to `log`."""
    return daemon("tentacle", "--home", str(home), "run", log=log)


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
        ca = self.paths.config / server_config.CA_CERT
        return await api_call(self.url, ca, self.admin_key if key is None else key, method, path, body)

    def online(self, *names: str) -> bool:
        """Whether the server can reach every named machine now."""
        return all(self.server.fleet.is_online(name) for name in names)

    def ca_signed(self, folder: Path, name: str, *, register: bool = False) -> Identity:
        """A certificate the server's CA signed for `name`; a polling machine's when `register`."""
        from server_shim.ca import Authority
        from server_shim.store import machine_rows as machines
        from tentacle.net import pki

        key = pki.new_key()
        cert = Authority(self.paths.config).sign(pki.build_csr(key, name).decode(), name)
        identity = Identity(folder / name / "cert.pem", folder / name / "key.pem", pki.cert_thumbprint(cert))
        pki.write_private(identity.cert, pki.cert_pem(cert))
        pki.write_private(identity.key, pki.key_pem(key))
        if register:
            machine = machines.Machine(
                space="Default",
                name=name,
                thumbprint=identity.thumbprint,
                certificate=pki.cert_pem(cert).decode(),
                mode="polling",
                endpoint=None,
                environments=("Dev",),
                roles=("web",),
                registered_at=time.time(),
            )
            self.server.db.sync(lambda conn: machines.insert(conn, machine, force=False))
        return identity

    async def machines(self) -> dict[str, dict[str, Any]]:
        """The machines list, by name."""
        status, body = await self.api("GET", "/api/Default/machines/v1")
        assert status == 200, body
        return {m["name"]: m for m in body["items"]}


MIGRATED = "migrated"  # the template every test database is copied from: migrating takes longer


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test run (Debian's postgresql package, a temporary folder),
    with a migrated template database."""
    from server_shim.store.database import Database

    cluster = Cluster.start()
    try:
        Database(cluster.create_database(MIGRATED)).close()
        yield cluster
    finally:
        cluster.stop()


_DATABASES = iter(range(1, 1 << 30))


def _fresh_database(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.config.getoption("--db-backend") != "postgresql":
        yield ""
        return
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    name = f"test{next(_DATABASES)}"
    url = cluster.create_database(name, template=MIGRATED)
    yield url
    cluster.drop_database(name)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database's URL under ``--db-backend postgresql`` (migrated, empty), else ""
    (SQLite). Tests of migrating itself make their own (`pg_cluster.create_database`)."""
    yield from _fresh_database(request)


@pytest.fixture(scope="module")
def module_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """`database_url` for a module's shared server."""
    yield from _fresh_database(request)


@pytest.fixture
def db_location(tmp_path: Path, database_url: str) -> Path | str:
    """Where a test's own `Database` lives: the PostgreSQL database, or a SQLite file."""
    return database_url or tmp_path / "server.db"


def init_argv(home: Path, database_url: str, *more: str) -> list[str]:
    """``server-shim --home HOME init`` on port 0 for both sites, on the test's backend."""
    argv = ["--home", str(home), "init", "--listen", "127.0.0.1:0", "--polling-listen", "127.0.0.1:0"]
    return [*argv, *(["--database", database_url] if database_url else []), *more]


@pytest.fixture
def server_home(tmp_path: Path, database_url: str) -> InstancePaths:
    """An initialised server instance (CA, certificate, database, admin key)."""
    home = tmp_path / "server"
    assert server_cli.main(init_argv(home, database_url, "--public-url", "https://127.0.0.1:8443")) == 0
    return resolve("server-shim", str(home))


class CountingServer(Server):
    """The real server, recording every request its API site answers ("METHOD /path", in order)."""

    def __init__(self, paths: InstancePaths, config: server_config.ServerConfig) -> None:
        super().__init__(paths, config)
        self.requests: list[str] = []

    def api_app(self) -> web.Application:
        """The real API app with a recording middleware in front."""
        app = super().api_app()

        @web.middleware
        async def record(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            self.requests.append(f"{request.method} {request.path}")
            return await handler(request)

        app.middlewares.insert(0, record)
        return app


async def shim_command(live: LiveServer, *args: str) -> tuple[int, str]:
    """`server-shim --home H ARGS --server URL` in a thread (it blocks); returns (exit code, stdout)."""
    out = io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out):
            return server_cli.main(["--home", str(live.paths.config), *args, "--server", live.url])

    code = await asyncio.to_thread(call)
    return code, out.getvalue()


async def start_server(
    paths: InstancePaths, api_port: int = 0, polling_port: int = 0, *, kind: type[Server] = Server
) -> LiveServer:
    """Start a server (or a subclass of it) on 127.0.0.1 with fast listening checks."""
    config = server_config.load(paths).with_changes(
        checks=Checks(interval=0.5, timeout=2.0),
        listen=server_config.Endpoint("127.0.0.1", api_port),
        polling=server_config.Endpoint("127.0.0.1", polling_port),
    )
    server = kind(paths, config)
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
        self,
        name: str,
        mode: str,
        roles: tuple[str, ...] = ("web",),
        environment: str = "Dev",
        *,
        home: str | None = None,
        **claims: Any,
    ) -> InstancePaths:
        """Register `name` (its instance home under `home`, default its name); `claims` are more
        `Registration` fields: space, tenants, tenant_tags, tenanted_deployment."""
        paths = resolve("tentacle", str(self.root / (home or name)))
        listen = ListenConfig(host="127.0.0.1", port=0) if mode == "listening" else None
        reg = registration.Registration(
            server=self.server.url,
            token=self.server.token(),
            server_thumbprint=self.server.thumbprint,
            name=name,
            environments=(environment,),
            roles=roles,
            listen=listen,
            **claims,
        )
        await registration.register(paths, reg)
        return paths

    async def start(self, name: str, *, reachable: bool = True) -> Agent:
        """Run a registered tentacle; returns once it serves (and, with `reachable`, once the
        server knows its port: a listening tentacle on port 0 reports it after binding)."""
        paths = resolve("tentacle", str(self.root / name))
        conf = agent_config.load(paths).with_changes(heartbeat=HeartbeatConfig(interval=2.0))
        agent = Agent(paths, conf)
        task = asyncio.create_task(agent.serve())
        self.running[name] = (agent, task)
        reports = reachable and conf.mode == "listening" and conf.listen.port == 0
        ready = agent.port_reported if reports else agent.started
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({waiting, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():
            task.result()  # raises why it did not start
        if not ready.is_set():
            pytest.fail(f"{name} did not {'report its port' if reports else 'start'} within 10 s")
        return agent

    async def stop(self, name: str) -> None:
        agent, task = self.running.pop(name)
        agent.stop.set()
        await asyncio.wait_for(task, 15)

    async def stop_all(self) -> None:
        for name in list(self.running):
            await self.stop(name)

    async def bring_online(self, mode: str, roles_by_name: dict[str, tuple[str, ...]]) -> None:
        """Register and start each tentacle, then wait until the server sees them all online."""
        for name, roles in roles_by_name.items():
            await self.register(name, mode, roles=roles)
            await self.start(name)
        await eventually(lambda: self.server.online(*roles_by_name), 10)


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
