"""`tentacle run`: the daemon, in the foreground.

Starts the transport the configuration names (listening or polling) around one
`Service`, tells systemd when it is ready, and stops gracefully on the first
SIGTERM or SIGINT (a second one exits at once). SIGHUP re-reads the configuration
and applies what can change without a restart (pinned thumbprints, log level).
The connection state goes to ``state/connection.json`` for `tentacle status`.
A listening tentacle configured with port 0 takes a free port, logs it
(``listening.started port=N``) and tells the server, retrying until the server has it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tentacle.agent import agent_config as config_mod
from tentacle.agent.agent_config import TentacleConfig
from tentacle.agent.polling_client import PollingClient
from tentacle.agent.rpc import Service
from tentacle.agent.signatures import PinFile, SignatureCheck
from tentacle.common import heap, sdnotify
from tentacle.common.atomicfile import write_private
from tentacle.common.logs import event
from tentacle.common.paths import InstancePaths
from tentacle.errors import ConfigError, TentacleError
from tentacle.net.tls import client_context, server_context
from tentacle.protocol.backoff import Backoff
from tentacle.protocol.rpc_messages import TRUST_ROTATE
from tentacle.runner.runner import TaskRunner

if TYPE_CHECKING:
    from tentacle.agent.listening import ListeningServer
    from tentacle.packages.cache import PackageCache
    from tentacle.packages.pull import Acquirer
    from tentacle.protocol.plan import Plan, PlannedPackage

log = logging.getLogger("tentacle.agent.daemon")
STATE_FILE = "connection.json"


class Agent:
    """One running tentacle."""

    def __init__(self, paths: InstancePaths, config: TentacleConfig) -> None:
        self.paths = paths
        self.config = config.require_registered(paths)
        # Signed requests are checked in the service layer, before any handler (the runner's).
        pins = PinFile(paths.state, config.server.signing_key)
        self.signatures = SignatureCheck(config.name, pins.pinned(), pins.save)
        self.service = Service(config.name, config.mode, guard=self.signatures.check)
        self.service.serve(TRUST_ROTATE, self.signatures.rotate)
        self.packages = Packages(paths, self.config)
        self.runner = TaskRunner(
            paths.state,
            self.packages.acquire,
            parallelism=self.config.packages.parallelism,
            on_end=self.packages.release,
            log_limit_bytes=self.config.tasks.log_limit_bytes,
        )
        self.runner.register(self.service)
        self.stop = asyncio.Event()
        self.listener: ListeningServer | None = None
        self.pollers: list[PollingClient] = []  # one per server node
        self.bound_port: int | None = None
        self.started = asyncio.Event()
        self.state_file = StateFile(paths.state / STATE_FILE)
        self.port_reported = asyncio.Event()  # set once the server has the port we took (port 0)
        self._reporter: asyncio.Task[None] | None = None

    def _files(self) -> tuple[Path, ...]:
        names = (config_mod.CERT_FILE, config_mod.KEY_FILE, config_mod.SERVER_CA_FILE)
        files = tuple(config_mod.file(self.paths, n) for n in names)
        for path in files:
            if not path.exists():
                raise ConfigError(f"{path}: missing; register this tentacle again")
        return files

    @property
    def pins(self) -> frozenset[str]:
        """The server thumbprints this tentacle trusts."""
        return frozenset(self.config.server.thumbprints)

    def record_state(self, state: str, detail: str = "") -> None:
        """Write the connection state for `tentacle status` soon (best effort, off the loop)."""
        body = {
            "mode": self.config.mode,
            "state": state,
            "detail": detail,
            "since": time.time(),
            "pid": os.getpid(),
            "port": self.bound_port,
        }
        self.state_file.put(json.dumps(body).encode())

    async def start(self) -> None:
        """Bind the listener or start polling."""
        cert, key, ca = self._files()
        self.paths.create()
        if self.config.mode == "listening":
            from tentacle.agent.listening import ListeningServer  # aiohttp.web: only a listener needs it
            from tentacle.packages.receive import PackageReceiver

            ctx = server_context(cert, key, ca, require=True)
            receiver = PackageReceiver(self.packages.cache, self.runner.planned_package)
            self.listener = ListeningServer(self.service, self.pins, ctx, receiver.add_routes)
            self.bound_port = await self.listener.start(self.config.listen.host, self.config.listen.port)
            self.record_state("listening", f"{self.config.listen.host}:{self.bound_port}")
            event(log, "listening.started", host=self.config.listen.host, port=self.bound_port)
            if self.config.listen.port == 0:
                reporting = self._report_port(client_context(ca, cert, key), self.bound_port)
                self._reporter = asyncio.create_task(reporting)
        else:
            ctx = client_context(ca, cert, key)
            self.pollers = [
                PollingClient(
                    url, self.pins, ctx, self.service, self.record_state, self.config.heartbeat.interval
                )
                for url in self.config.server.every_polling_url()
            ]

    async def _report_port(self, ctx: ssl.SSLContext, port: int) -> None:
        """Tell the server which port we took, until it has it (it may not be up yet)."""
        from tentacle.agent.listening import report_port

        backoff = Backoff(cap=30.0)
        while True:
            try:
                endpoint = await report_port(self.config.server.url, self.pins, ctx, port)
            except TentacleError as exc:
                if not exc.retryable:  # refused (machine removed, untrusted server): retrying cannot help
                    event(log, "listening.report_refused", logging.ERROR, port=port, reason=exc.message)
                    return
                delay = backoff.next_delay()
                event(log, "listening.report_failed", logging.WARNING, port=port, reason=exc.message)
                await asyncio.sleep(delay)
                continue
            event(log, "listening.reported", port=port, endpoint=endpoint)
            self.port_reported.set()
            return

    async def serve(self) -> None:
        """Run until `stop` is set."""
        await self.packages.sweep()  # before a resumed task may download again
        await self.runner.start()  # the tasks on disk, loaded off the loop, before any request
        await self.start()
        self.started.set()
        sdnotify.ready(f"{self.config.mode} as {self.config.name}")
        watchdog = asyncio.create_task(sdnotify.watchdog_loop())
        try:
            if self.pollers:
                await asyncio.gather(*(poller.run(self.stop) for poller in self.pollers))
            else:
                await self.stop.wait()
        finally:
            sdnotify.stopping()
            watchdog.cancel()
            if self._reporter is not None:
                self._reporter.cancel()
            await self.runner.shutdown(self.config.tasks.stop_grace)
            await self.packages.close()
            if self.listener is not None:
                await self.listener.stop()
            self.record_state("stopped")
            await self.state_file.flush()
            event(log, "agent.stopped", machine=self.config.name)

    def reload(self) -> None:
        """Apply a changed configuration file (SIGHUP)."""
        try:
            fresh = config_mod.load(self.paths)
        except ConfigError as exc:
            event(log, "config.reload_failed", logging.ERROR, reason=exc.message)
            return
        self.config = self.config.with_changes(server=fresh.server, log_level=fresh.log_level)
        pinned = PinFile(self.paths.state, fresh.server.signing_key).pinned()
        if pinned and pinned != self.signatures.pinned:  # registered again meanwhile: never unpinned
            self.signatures.pinned = pinned
        logging.getLogger().setLevel(fresh.log_level.upper())
        if self.listener is not None:
            self.listener.set_pins(self.pins)
        for poller in self.pollers:
            poller.pins = self.pins
        event(log, "config.reloaded", thumbprints=",".join(sorted(self.pins)))


class StateFile:
    """``state/connection.json``, written on a worker thread (its fsync can take a second on a
    busy disk, which the event loop must not wait for); the latest state wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._latest: bytes | None = None
        self._writer: asyncio.Task[None] | None = None

    def put(self, data: bytes) -> None:
        """Write `data` soon; returns at once (call it on the event loop)."""
        self._latest = data
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._latest is not None:
            data, self._latest = self._latest, None
            try:
                await asyncio.to_thread(write_private, self.path, data, 0o644)
            except OSError as exc:
                event(log, "state.write_failed", logging.WARNING, reason=str(exc))

    async def flush(self) -> None:
        """Wait until the latest state is on disk."""
        if self._writer is not None:
            await self._writer


class Packages:
    """The package cache and the acquirer, built when first needed (an idle tentacle has neither)."""

    def __init__(self, paths: InstancePaths, config: TentacleConfig) -> None:
        self.paths, self.config = paths, config
        self._cache: PackageCache | None = None
        self._acquirer: Acquirer | None = None
        self._building = asyncio.Lock()

    def cache(self) -> PackageCache:
        """The cache under ``<state>/packages``."""
        if self._cache is None:
            from tentacle.packages.cache import PackageCache

            self._cache = PackageCache(self.paths.state / "packages", self.config.packages.min_free_share)
        return self._cache

    async def acquirer(self) -> Acquirer:
        """Pulls from mirrors and fetches from the server's feed, with our registered certificate."""
        async with self._building:  # packages acquired at once share the one acquirer
            if self._acquirer is None:
                from tentacle.packages.pull import Acquirer

                names = (config_mod.SERVER_CA_FILE, config_mod.CERT_FILE, config_mod.KEY_FILE)
                ca, cert, key = (config_mod.file(self.paths, n) for n in names)
                # Off the loop: loading the system's CA bundle takes over 100 ms.
                ctx = await asyncio.to_thread(client_context, ca, cert, key, system_roots=True)
                url = self.config.server.url
                feed = url.rstrip("/") + "/nuget/v3/index.json" if url else None
                pins = frozenset(self.config.server.thumbprints)
                mirrors = self.config.packages.mirrors
                self._acquirer = Acquirer(self.cache(), ctx, mirrors, feed, server_pins=pins)
        return self._acquirer

    async def sweep(self) -> None:
        """Remove what interrupted downloads left in the cache (tentacle.packages.leftovers)."""
        from tentacle.packages.leftovers import sweep_cache  # the standard library only

        await asyncio.to_thread(sweep_cache, self.paths.state / "packages")

    async def acquire(self, plan: Plan, package: PlannedPackage) -> Path:
        """The task runner's `acquire`: the verified file of one package."""
        return await (await self.acquirer())(plan, package)

    def release(self, task_id: str) -> None:
        """A task ended: its packages may be evicted."""
        if self._acquirer is not None:
            self._acquirer.release(task_id)

    async def close(self) -> None:
        """Stop background probes."""
        if self._acquirer is not None:
            await self._acquirer.close()


def install_signals(agent: Agent) -> None:
    """First TERM/INT: stop gracefully; second: exit now. HUP: reload."""
    loop = asyncio.get_running_loop()

    def on_stop(signame: str) -> None:
        if agent.stop.is_set():
            event(log, "agent.killed", logging.WARNING, signal=signame)
            os._exit(1)
        event(log, "agent.stopping", signal=signame)
        agent.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, agent.reload)


async def run(paths: InstancePaths, config: TentacleConfig) -> int:
    """The body of `tentacle run`; returns the exit code."""
    agent = Agent(paths, config)
    install_signals(agent)
    trimming = asyncio.create_task(_trim_once_started(agent))
    try:
        await agent.serve()
    except OSError as exc:
        raise TentacleError(f"cannot start: {exc}") from exc
    finally:
        trimming.cancel()
    return 0


async def _trim_once_started(agent: Agent) -> None:
    """Once up, give back what starting freed (`tentacle.common.heap`): a few ms, once."""
    await agent.started.wait()
    heap.trim()
