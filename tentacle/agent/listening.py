"""Listening transport: the tentacle serves mutual TLS and the server connects in.

The server posts each request envelope (`tentacle.protocol.messages`) to ``/rpc/v1``. TLS checks the client's
chain against the server CA; this module then pins the exact certificate: a
certificate signed by the same CA but belonging to anyone else (another tentacle,
say) is refused with 403 and a log line naming both thumbprints.

A tentacle registered with port 0 takes a free port at each start and tells the server
which one (`report_port`, over its registered certificate, to the pinned server).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
from aiohttp import web

from tentacle.agent.rpc import Service
from tentacle.common.logs import event
from tentacle.net import httpclient
from tentacle.net.tls import peer_thumbprint, pinned_connector
from tentacle.protocol import messages
from tentacle.protocol.messages import MessageError, Request, Response

log = logging.getLogger("tentacle.agent.listening")
RPC_PATH = "/rpc/v1"
PORT_PATH = "/api/machines/listening-port/v1"
_PINS = web.AppKey("pins", list[frozenset[str]])  # one cell, replaced on reload
_SERVICE = web.AppKey("service", Service)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def pin_server(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse every peer but the pinned server, naming what it presented."""
    presented = peer_thumbprint(request.transport)
    pins = request.app[_PINS][0]
    if presented not in pins:
        expected = ",".join(sorted(pins))
        event(
            log,
            "trust.refused",
            logging.WARNING,
            peer=request.remote,
            expected=expected,
            presented=presented or "none",
        )
        return _error(
            403, "untrusted-peer", f"expected server thumbprint {expected}, presented {presented or 'none'}"
        )
    return await handler(request)


async def rpc(request: web.Request) -> web.Response:
    """One request envelope in, one response envelope out.

    A request that fails to decode but names its id is answered with an error response
    (the server's call fails at once, with the path); anything else gets a 400.
    """
    data = await request.read()
    try:
        message = messages.decode(data)
    except MessageError as exc:
        refusal = messages.refusal(data, exc)
        if refusal is None:
            return _error(400, "bad-message", exc.message)
        return _envelope(refusal)
    if not isinstance(message, Request):
        return _error(400, "bad-message", "expected a request")
    return _envelope(await request.app[_SERVICE].handle(message))


def _envelope(response: Response) -> web.Response:
    return web.Response(body=messages.encode(response), content_type="application/json")


def make_app(
    service: Service, pins: frozenset[str], extra_routes: Callable[[web.Application], None] | None = None
) -> web.Application:
    """The aiohttp application of a listening tentacle; `extra_routes` adds more (pushed packages)."""
    app = web.Application(middlewares=[pin_server], client_max_size=messages.MAX_MESSAGE_BYTES)
    app[_PINS] = [pins]
    app[_SERVICE] = service
    app.router.add_post(RPC_PATH, rpc)
    if extra_routes is not None:
        extra_routes(app)
    return app


class ListeningServer:
    """The listening site; `pins` can be replaced on reload."""

    def __init__(
        self,
        service: Service,
        pins: frozenset[str],
        ctx: ssl.SSLContext,
        extra_routes: Callable[[web.Application], None] | None = None,
    ) -> None:
        self.app = make_app(service, pins, extra_routes)
        self.ctx = ctx
        # Large reads: a pushed package is hundreds of MB, and 64 KiB pauses the socket often.
        # A stop waits at most 5 s for requests in flight (the server calls again), not aiohttp's 60 s.
        self.runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, read_bufsize=1 << 22, shutdown_timeout=5.0
        )

    def set_pins(self, pins: frozenset[str]) -> None:
        """Trust a new set of server thumbprints (SIGHUP)."""
        self.app[_PINS][0] = pins

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=self.ctx, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[attr-defined]  # aiohttp keeps the server private
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        """Stop accepting and close connections."""
        await self.runner.cleanup()


async def report_port(server_url: str, pins: Iterable[str], ctx: ssl.SSLContext, port: int) -> str:
    """Tell the pinned server the port we bound; returns the endpoint it will use now.

    `ctx` presents our registered certificate: that is how the server knows which machine moved.
    """
    async with aiohttp.ClientSession(connector=pinned_connector(pins)) as session:
        answer = await httpclient.call(
            session, "POST", server_url.rstrip("/") + PORT_PATH, body={"port": port}, ssl_context=ctx
        )
    return str(answer.get("endpoint", "")) if isinstance(answer, dict) else ""
