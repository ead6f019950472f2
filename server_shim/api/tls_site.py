"""An aiohttp TCP site serving TLS with a small read buffer per connection.

asyncio's TLS layer (`asyncio.sslproto.SSLProtocol`) gives every connection a 256 KiB
receive buffer, zero-filled when the connection is accepted and so resident from then
on. With 5,000 polling tentacles connected that is 1.25 GiB of buffers that carry a few
hundred bytes a minute. `LeanTLSSite` serves the same TLS (same context, same
handshake and shutdown timeouts) with a buffer of one TLS record's payload: a large
message then takes more, smaller reads, which costs microseconds.

aiohttp passes ``ssl=`` to `loop.create_server`, which builds the standard protocol;
this site instead builds the TLS protocol itself around aiohttp's handler, exactly as
the event loop would. `asyncio.sslproto` is stable across CPython 3.11-3.13.

The same protocol enforces two of the slow-client rules (`server_shim.api.slow_clients`):
the handshake's deadline, and the bound on connections per client address, checked as a
connection is accepted, before any TLS work is spent on it.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from typing import Any

from aiohttp import web

from server_shim.api.slow_clients import AddressLimiter

READ_BUFFER = 16 * 1024  # the largest TLS record's payload


class _LeanSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a one-record read buffer, counted against its address's limit."""

    max_size = READ_BUFFER

    def __init__(self, *args: Any, limiter: AddressLimiter | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limiter = limiter
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Refuse a connection over its address's limit at once; else start the handshake."""
        if self._limiter is not None:
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if peer else "unknown"
            if not self._limiter.admit(address):
                transport.close()  # nothing written yet: connection_lost follows, no handshake begun
                return
            self._address = address
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Give the connection's place back to its address."""
        if self._limiter is not None and self._address is not None:
            self._limiter.release(self._address)
            self._address = None
        super().connection_lost(exc)


class LeanTLSSite(web.BaseSite):
    """Like ``web.TCPSite(runner, host, port, ssl_context=ctx)``, with lean TLS buffers."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        backlog: int = 128,
        reuse_address: bool = True,
        handshake_timeout: float | None = None,
        limiter: AddressLimiter | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self.host, self.requested_port = host, port
        self.reuse_address = reuse_address
        self.port = port
        self.handshake_timeout = handshake_timeout  # None: asyncio's default (60 s)
        self.limiter = limiter

    @property
    def name(self) -> str:
        """The site's URL."""
        return f"https://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; `port` is the bound port afterwards (useful with port 0)."""
        await super().start()
        loop = asyncio.get_running_loop()
        handler, ctx = self._runner.server, self._ssl_context
        assert handler is not None, "runner.setup() makes the handler"
        assert ctx is not None, "__init__ requires a context"

        def connection() -> asyncio.BaseProtocol:
            waiter = loop.create_future()
            waiter.add_done_callback(_handshake_done)
            return _LeanSSLProtocol(
                loop,
                handler(),
                ctx,
                waiter,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
                limiter=self.limiter,
            )

        server = await loop.create_server(
            connection,
            self.host,
            self.requested_port,
            backlog=self._backlog,
            reuse_address=self.reuse_address,
        )
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])


def _handshake_done(waiter: asyncio.Future[None]) -> None:
    """Retrieve a failed handshake's error: the loop itself only reports it in debug mode."""
    if not waiter.cancelled():
        waiter.exception()
