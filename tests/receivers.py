"""A webhook receiver for the reactions tests: a real aiohttp server on 127.0.0.1 that records.

Each request it gets is kept (method, path, query, headers, body, time) in order. What it
answers is a script: a list of (status, headers) taken one per request, the last one kept
for the rest; ``hold`` makes it wait before answering (a receiver that is slow, or that a
test kills the server in front of).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Got:
    """One request the receiver got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        """The body, decoded."""
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        """Whether X-Tentacle-Signature is the HMAC-SHA256 of the body under ``secret``."""
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("X-Tentacle-Signature", ""), expected)


@dataclass
class Receiver:
    """A running receiver; ``answers`` is the script of (status, headers) it answers with."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=lambda: [(200, {})])
    hold: float = 0.0
    got: list[Got] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The receiver's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.got.append(
            Got(request.method, request.path, dict(request.query), dict(request.headers), body, time.time())
        )
        self.arrived.set()
        if self.hold:
            await asyncio.sleep(self.hold)
        status, headers = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "no")

    async def start(self, port: int = 0) -> Receiver:
        """Listen on 127.0.0.1 (``port`` 0: any free one)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A held request ends when its client goes away (a killed server), and stopping waits for none.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started: bound
        return self

    async def stop(self) -> None:
        """Stop listening (what is in flight is cut)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def deliveries(self) -> list[str]:
        """The X-Tentacle-Delivery of each request, in order."""
        return [g.headers.get("X-Tentacle-Delivery", "") for g in self.got]
