"""Deadlines and bounds for clients that connect and then take their time (slowloris).

A client that opens connections and trickles bytes holds a socket, a TLS buffer and a
task each, for as long as the server waits. Three rules end the wait, on both ports:

- **handshake**: the TLS handshake must finish within ``handshake_timeout`` (the TLS
  protocol's own deadline, `LeanTLSSite`);
- **headers**: a request's line and headers must be complete within ``header_timeout`` of
  the connection's start or of the previous response's end, else the connection is closed.
  That is aiohttp's keep-alive timer (``keepalive_timeout``), which closes a connection
  whose handler still waits for a complete request, however many bytes of it arrived;
- **bodies** (`body_deadline`): while a handler waits for body bytes that do not come, the
  body must deliver a byte at least every ``body_timeout`` seconds and, after that long,
  ``body_min_rate`` bytes per second on average. Time the server itself holds the socket
  paused (a handler busy writing what it read) does not count against the client. A body
  that falls behind fails its read with `SlowClient` (408) and the connection closes.

And one bound: at most ``per_address`` connections from one client address at a time on a
port (`AddressLimiter`); one more is closed before its handshake, logged once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from tentacle.common.logs import event
from tentacle.errors import TentacleError

log = logging.getLogger("server_shim.api.slow_clients")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOG_EVERY = 60.0  # seconds between two log lines about one address over its limit


class SlowClient(TentacleError):
    """A request body that came too slowly, or stopped coming."""

    http_status = 408
    CODE = "too-slow"


@dataclass(frozen=True)
class BodyPace:
    """How fast a request body must come: a byte every ``timeout`` s, ``min_rate`` B/s on average."""

    timeout: float = 30.0
    min_rate: int = 1024


class AddressLimiter:
    """Counts one port's open connections per client address, refusing those over ``limit``."""

    def __init__(self, limit: int, site: str) -> None:
        self.limit, self.site = limit, site
        self.open: dict[str, int] = {}
        self._logged: dict[str, float] = {}

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and counted nothing) when over the limit."""
        held = self.open.get(address, 0)
        if held >= self.limit:
            self._log_refusal(address)
            return False
        self.open[address] = held + 1
        return True

    def release(self, address: str) -> None:
        """A connection from ``address`` closed."""
        held = self.open.get(address, 0) - 1
        if held > 0:
            self.open[address] = held
        else:
            self.open.pop(address, None)

    def _log_refusal(self, address: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(address, -LOG_EVERY) >= LOG_EVERY:
            self._logged[address] = now
            event(
                log, "connection.over_limit", logging.WARNING, site=self.site, peer=address, limit=self.limit
            )
            if len(self._logged) > 10_000:  # forget old addresses rather than grow without end
                self._logged = {a: t for a, t in self._logged.items() if now - t < LOG_EVERY}


class BodyWatch:
    """Watches one request's body while its handler runs; trips it when the client falls behind."""

    def __init__(self, request: web.Request, pace: BodyPace) -> None:
        self.request, self.pace = request, pace
        self.waited = 0.0  # seconds the server was ready for bytes that had not come
        self.idle = 0.0  # of those, seconds since the last byte
        self.seen = request.content.total_bytes
        self.tripped: str | None = None
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        tick = min(1.0, self.pace.timeout / 4)
        while self.tripped is None and not self.request.content.is_eof():
            await asyncio.sleep(tick)
            self._tick(tick)

    def _tick(self, seconds: float) -> None:
        content, transport = self.request.content, self.request.transport
        if content.is_eof() or transport is None or not transport.is_reading():
            return  # all there, gone, or paused by us (backpressure): not the client's doing
        got = content.total_bytes
        self.waited += seconds
        self.idle = 0.0 if got > self.seen else self.idle + seconds
        self.seen = got
        if self.idle >= self.pace.timeout:
            self._trip(f"no byte of the request body for {self.pace.timeout:g} s")
        elif self.waited >= self.pace.timeout and got / self.waited < self.pace.min_rate:
            rate = got / self.waited
            self._trip(
                f"the request body came at {rate:.0f} B/s, under the minimum of {self.pace.min_rate} B/s"
            )

    def _trip(self, reason: str) -> None:
        self.tripped = reason
        event(
            log,
            "connection.slow_body",
            logging.WARNING,
            peer=self.request.remote,
            path=self.request.path,
            reason=reason,
        )
        self.request.content.set_exception(SlowClient(reason))

    def stop(self) -> None:
        """The handler is done: stop watching."""
        self._task.cancel()


def body_deadline(pace: BodyPace) -> Middleware:
    """The middleware that watches every request with a body.

    Place it before (outside) ``errors``: the `SlowClient` a read raises becomes the 408
    there, and this middleware then closes the connection behind that answer.
    """

    @web.middleware
    async def watch_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        watch = BodyWatch(request, pace)
        try:
            response = await handler(request)
        finally:
            watch.stop()
        if watch.tripped is not None:  # a handler that caught the error itself: close all the same
            response.force_close()
        return response

    return watch_body
