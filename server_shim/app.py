"""`server-shim run`: the API site, the polling site and the fleet checks.

Two TLS listeners share one state: the API (operators with API keys, tentacles
registering, later the built-in feed) asks for client certificates but does not
require them; the polling site requires one. Stops gracefully on SIGTERM/SIGINT
(a second one exits at once) and tells systemd when it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from server_shim import server_config as cfg
from server_shim.api import feed_routes as feed_api
from server_shim.api import list_routes as lists_api
from server_shim.api import machine_routes as api
from server_shim.api import octopus_lookups as octopus_lookups_api
from server_shim.api import octopus_routes as octopus_api
from server_shim.api import octopus_tasks as octopus_tasks_api
from server_shim.api import polling_site as polling
from server_shim.api import project_routes as projects_api
from server_shim.api import reaction_routes as reactions_api
from server_shim.api import signing_routes as signing_api
from server_shim.api import space_routes as spaces_api
from server_shim.api import task_routes as tasks_api
from server_shim.api import tenant_routes as tenants_api
from server_shim.api.middleware import DB, api_key, errors
from server_shim.api.slow_clients import AddressLimiter, BodyPace, body_deadline
from server_shim.api.tls_site import LeanTLSSite
from server_shim.ca import Authority
from server_shim.dispatch.dispatcher import Dispatcher
from server_shim.dispatch.fleet import Fleet
from server_shim.dispatch.nodes import Node
from server_shim.dispatch.pusher import Pusher
from server_shim.dispatch.reactor import Reactor
from server_shim.dispatch.retention import Retention
from server_shim.dispatch.signer import Signer
from server_shim.server_config import ServerConfig
from server_shim.store import feed_store as feed
from server_shim.store import sealing
from server_shim.store.database import Database
from tentacle.common import sdnotify
from tentacle.common.logs import event
from tentacle.common.paths import InstancePaths
from tentacle.net import pki
from tentacle.net.tls import client_context, server_context

log = logging.getLogger("server_shim.app")
POLL_HEARTBEAT = 20.0
MAX_REQUEST_LINE = 32 * 1024


@dataclass
class Bound:
    """The ports actually bound (useful with port 0)."""

    api: int = 0
    polling: int = 0


class Server:
    """One running server."""

    def __init__(self, paths: InstancePaths, config: ServerConfig) -> None:
        self.paths, self.config = paths, config
        self.stop = asyncio.Event()
        conf = paths.config
        # A home made before sealing existed gets its key at its first start (init makes it now).
        sealing.create_key(paths.config, paths.state)
        self.db = Database(config.database_location(paths), sealing.load(paths.config, paths.state))
        self.files = {n: conf / n for n in (cfg.CA_CERT, cfg.CA_KEY, cfg.SERVER_CERT, cfg.SERVER_KEY)}
        self.fleet = Fleet(
            self.db,
            client_context(self.files[cfg.CA_CERT], self.files[cfg.SERVER_CERT], self.files[cfg.SERVER_KEY]),
            config.checks.interval,
            config.checks.timeout,
        )
        # The plan-signing key (its first one made here for a home made before keys existed).
        self.signer = Signer.open(self.db, paths.config, paths.state)
        self.fleet.signer = self.signer
        self.fleet.node = config.node_name()
        self.dispatcher = Dispatcher(
            self.db,
            self.fleet,
            config.tasks.target_lost_after,
            cancel_timeout=config.tasks.cancel_timeout,
            log_limit=config.tasks.log_limit_bytes,
            node=self.fleet.node,
        )
        self.node = Node(self.fleet.node, self.db, self.dispatcher, self.fleet)
        self.node.on_stopped = self.stop.set
        self._node_loop: asyncio.Task[None] | None = None
        self.pusher = Pusher(self.fleet, feed.store_dir(paths.state), self.fleet.client_ctx)
        self.dispatcher.gate_hooks.append(self.pusher)
        self.reactor = Reactor(
            self.db,
            self.dispatcher,
            work=paths.state / "reactions",
            ca=self.files[cfg.CA_CERT],
            server_url=self.api_url,
            node=self.fleet.node,
        )
        self.bound = Bound()
        self._runners: list[web.AppRunner] = []
        self._courier: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None

    def api_app(self) -> web.Application:
        """The API application."""
        limits = self.config.connections
        pace = body_deadline(BodyPace(limits.body_timeout, limits.body_min_rate))
        middlewares = [pace, errors, octopus_api.octopus_keys, api_key, octopus_api.octopus_bodies]
        app = web.Application(middlewares=middlewares, client_max_size=2 * 1024 * 1024)
        app[DB] = self.db
        app[api.FLEET] = self.fleet
        app[api.AUTHORITY] = Authority(self.paths.config)
        app[api.SIGNER] = self.signer
        spaces_api.add_routes(app)
        api.add_routes(app)
        signing_api.add_routes(app)
        projects_api.add_routes(app)
        feed_api.add_routes(app, feed.store_dir(self.paths.state), self.config.feed.max_package_bytes)
        app[tasks_api.DISPATCHER] = self.dispatcher
        tasks_api.add_routes(app)
        tenants_api.add_routes(app)
        octopus_api.add_routes(app)  # after ours: Octopus's paths that look like ours are ours
        octopus_tasks_api.add_routes(app)
        octopus_lookups_api.add_routes(app)
        reactions_api.add_routes(app)
        lists_api.add_routes(app)
        return app

    def api_url(self) -> str:
        """Where the API is reached (what reaction scripts are told): public_url, on the bound port."""
        if self.config.listen.port != 0:
            return self.config.public_url.rstrip("/")
        host = urlsplit(self.config.public_url).hostname or "127.0.0.1"
        return f"https://{f'[{host}]' if ':' in host else host}:{self.bound.api}"

    def settings(self) -> api.ApiSettings:
        """What the registration answer tells tentacles about this server."""
        polling_url = self.config.polling_url()
        if self.config.polling.port == 0 and not self.config.polling_public_url:
            polling_url = polling_url.replace(":0/", f":{self.bound.polling}/", 1)
        return api.ApiSettings(
            server_thumbprint=pki.cert_thumbprint(pki.load_cert(self.files[cfg.SERVER_CERT])),
            polling_url=polling_url,
            ca_pem=self.files[cfg.CA_CERT].read_text(),
        )

    async def _site(self, app: web.Application, host: str, port: int, require: bool, per_address: int) -> int:
        ctx = server_context(
            self.files[cfg.SERVER_CERT], self.files[cfg.SERVER_KEY], self.files[cfg.CA_CERT], require=require
        )
        # No TLS 1.3 session tickets: asyncio and aiohttp clients cannot resume a session, and
        # a restart changes the ticket key anyway; making two per handshake costs 40% of it.
        ctx.num_tickets = 0
        # Request lines up to 32 KiB: a feed route takes three path parameters (id and a page's
        # two versions), and what aiohttp refuses below the app is a text/plain 400, not our JSON.
        # keepalive_timeout is the header deadline as well: aiohttp closes a connection still
        # waiting for a complete request that long after it opened or after its last answer.
        limits = self.config.connections
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            max_line_size=MAX_REQUEST_LINE,
            keepalive_timeout=limits.header_timeout,
        )
        await runner.setup()
        self._runners.append(runner)
        site = LeanTLSSite(
            runner,
            host,
            port,
            ctx,
            backlog=1024,
            handshake_timeout=limits.handshake_timeout,
            limiter=AddressLimiter(per_address, "polling" if require else "api"),
        )
        await site.start()
        return site.port

    async def start(self) -> None:
        """Bind both sites and start the fleet checks."""
        # Staging files a killed push left, and rows older than the feed's catalog columns.
        await asyncio.to_thread(feed.prepare, self.db, feed.store_dir(self.paths.state))
        await self._seal_legacy_values()
        base = self.api_app()
        limits = self.config.connections
        polling_app = polling.make_app(base, POLL_HEARTBEAT)
        polling_at = self.config.polling
        self.bound.polling = await self._site(
            polling_app, polling_at.host, polling_at.port, True, limits.polling_per_address
        )
        base[api.SETTINGS] = self.settings()  # after binding: port 0 becomes the real polling port
        listen = self.config.listen
        self.bound.api = await self._site(base, listen.host, listen.port, False, limits.per_address)
        await self.node.register(self.api_url(), base[api.SETTINGS].polling_url)
        await self.dispatcher.start()
        self._node_loop = asyncio.create_task(self.node.loop())
        self._courier = asyncio.create_task(self.signer.courier_loop(self.fleet, self.config.checks.interval))
        self._retention = asyncio.create_task(Retention(self.db, self.config.events.keep_days).loop())
        await self.reactor.start()
        event(log, "server.started", api=self.bound.api, polling=self.bound.polling, node=self.node.name)

    async def _seal_legacy_values(self) -> None:
        """Once per home: seal the sensitive values it stored in clear, then rewrite the file."""
        sealed = await self.db.run(sealing.seal_legacy)
        if sealed:
            await asyncio.to_thread(self.db.rewrite)  # no freed page may keep a clear copy
            event(log, "values.sealed", rows=sealed)

    async def serve(self) -> None:
        """Run until `stop` is set, then close everything."""
        await self.start()
        checks = asyncio.create_task(self.fleet.check_loop())
        watchdog = asyncio.create_task(sdnotify.watchdog_loop())
        sdnotify.ready(f"api on {self.bound.api}, polling on {self.bound.polling}")
        try:
            await self.stop.wait()
        finally:
            sdnotify.stopping()
            checks.cancel()
            watchdog.cancel()
            await self.close()

    async def close(self) -> None:
        """Stop accepting connections, then close the links, the sites and the database."""
        for runner in self._runners:  # first, so that closed tentacles do not reconnect to us
            for site in list(runner.sites):
                await site.stop()
        if self._node_loop is not None:
            self._node_loop.cancel()
        for loop in (self._courier, self._retention):
            if loop is not None:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        await self.reactor.close()
        await self.dispatcher.close()
        with contextlib.suppress(Exception):  # the others take its tasks at once, not after the lease
            await self.node.stop()
        self.pusher.close()
        await self.fleet.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self.db.close()
        event(log, "server.stopped")


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one: every polling tentacle holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            event(log, "server.fd_limit_kept", logging.WARNING, limit=soft, reason=str(exc))
            return soft
        return wanted
    return soft


async def run(paths: InstancePaths, config: ServerConfig) -> int:
    """The body of `server-shim run`."""
    event(log, "server.fd_limit", open_files=raise_open_files_limit())
    server = Server(paths, config)
    loop = asyncio.get_running_loop()

    def on_stop(name: str) -> None:
        if server.stop.is_set():
            os._exit(1)
        event(log, "server.stopping", signal=name)
        server.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    # The unit's ExecReload sends SIGHUP, whose default action would end the server (and systemd
    # counts that as a clean exit, so it would stay down). Nothing is re-read: the log says so.
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: event(log, "server.reload_ignored", logging.WARNING, apply="restart the server"),
    )
    await server.serve()
    return 0
