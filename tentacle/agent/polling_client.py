"""Polling transport: the tentacle keeps a websocket open to the server.

The tentacle connects out (mutual TLS, the server pinned by thumbprint) and the
server sends its requests down the socket; the tentacle answers each with a
response message. Requests are handled concurrently, so a long call never holds up
a ping. Heartbeats (websocket ping/pong) notice a half-open connection within two
intervals; reconnects follow `Backoff` (1 s to 60 s, jittered, reset on success).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

import aiohttp

from tentacle.agent.rpc import Service
from tentacle.common.logs import event
from tentacle.errors import RemoteError, TrustError
from tentacle.net.failures import NETWORK_ERRORS, reason, translate
from tentacle.net.tls import pinned_connector
from tentacle.protocol import messages
from tentacle.protocol.backoff import Backoff
from tentacle.protocol.messages import MessageError, Request

log = logging.getLogger("tentacle.agent.polling_client")
StateCallback = Callable[[str, str], None]


class PollingClient:
    """Keeps one websocket to the server alive until `stop` is set."""

    def __init__(
        self,
        url: str,
        pins: frozenset[str],
        ctx: ssl.SSLContext,
        service: Service,
        on_state: StateCallback,
        heartbeat: float = 20.0,
    ) -> None:
        self.url, self.pins, self.ctx = url, pins, ctx
        self.service = service
        self.on_state = on_state
        self.heartbeat = heartbeat
        self.backoff = Backoff()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, reconnect; returns when `stop` is set."""
        while not stop.is_set():
            reason = await self._session(stop)
            if stop.is_set():
                break
            delay = self.backoff.next_delay()
            self.on_state("disconnected", reason)
            event(log, "polling.retry", logging.INFO, in_seconds=round(delay, 1), reason=reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> str:
        """One connection's life; returns why it ended."""
        try:
            async with (
                aiohttp.ClientSession(connector=pinned_connector(self.pins)) as session,
                session.ws_connect(
                    self.url,
                    ssl=self.ctx,
                    heartbeat=self.heartbeat,
                    max_msg_size=messages.MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                ) as ws,
            ):
                self.backoff.reset()
                self.on_state("connected", self.url)
                event(log, "polling.connected", url=self.url)
                return await self._serve(ws, stop)
        except NETWORK_ERRORS as exc:
            error = translate(exc, self.url)
            if isinstance(error, TrustError):
                event(log, "trust.refused", logging.ERROR, url=self.url, reason=reason(exc))
            elif isinstance(error, RemoteError):
                event(log, "polling.refused", logging.ERROR, url=self.url, reason=reason(exc))
            else:
                event(log, "polling.connect_failed", logging.WARNING, url=self.url, reason=reason(exc))
            return reason(exc)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event) -> str:
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                receive = asyncio.create_task(ws.receive())
                await asyncio.wait({receive, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper.done():
                    receive.cancel()
                    await ws.close()
                    return "stopping"
                msg = receive.result()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return f"connection closed ({msg.type.name.lower()})"
                self._spawn(ws, msg.data)
        finally:
            stopper.cancel()

    def _spawn(self, ws: aiohttp.ClientWebSocketResponse, data: str) -> None:
        task = asyncio.create_task(self._answer(ws, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, ws: aiohttp.ClientWebSocketResponse, data: str) -> None:
        """Answer one request; one that fails to decode but names its id gets an error response."""
        try:
            message = messages.decode(data)
        except MessageError as exc:
            event(log, "polling.bad_message", logging.WARNING, reason=exc.message)
            response = messages.refusal(data, exc)
        else:
            response = await self.service.handle(message) if isinstance(message, Request) else None
        if response is not None and not ws.closed:
            await ws.send_frame(messages.encode(response), aiohttp.WSMsgType.TEXT)
