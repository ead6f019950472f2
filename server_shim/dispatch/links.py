"""The server's two ways of calling a tentacle, behind one `call`.

- `PollingLink`: the tentacle's websocket is open to us; a request goes down it and
  the response comes back tagged with the same id.
- `ListeningLink`: we connect to the tentacle's endpoint with our certificate as the
  client certificate, pinned to the tentacle's own thumbprint, and POST the request.

Both raise `TransportError` when the tentacle cannot be reached and `RemoteError`
when it answered with an error.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from tentacle.errors import RemoteError, TransportError
from tentacle.net.failures import NETWORK_ERRORS, translate
from tentacle.net.tls import pinned_connector
from tentacle.protocol import messages
from tentacle.protocol.messages import Request, Response

RPC_PATH = "/rpc/v1"
_ids = itertools.count(1)


class Link(Protocol):
    """A way to send one request to one tentacle."""

    async def call(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request and return the result (or raise)."""

    async def close(self) -> None:
        """Drop the connection."""


def _result(response: Response, method: str) -> dict[str, Any]:
    if response.error is not None:
        raise RemoteError(
            f"{method}: {response.error.get('message')}",
            code=str(response.error.get("code", "error")),
            status=400,
        )
    return response.result or {}


class PollingLink:
    """Requests over a polling tentacle's websocket."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.pending: dict[str, asyncio.Future[Response]] = {}

    async def call(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request and wait for its response."""
        request = Request(f"r{next(_ids)}", method, params)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.pending[request.id] = future
        try:
            await self.ws.send_str(messages.encode(request))
            return _result(await asyncio.wait_for(future, timeout), method)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise TransportError(f"{method}: polling connection failed: {exc or type(exc).__name__}") from exc
        finally:
            self.pending.pop(request.id, None)

    def deliver(self, response: Response) -> None:
        """Hand a response from the socket to its waiting caller."""
        future = self.pending.get(response.id)
        if future is not None and not future.done():
            future.set_result(response)

    def fail_all(self, reason: str) -> None:
        """The socket closed: every waiting call fails now, not at its timeout."""
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))

    async def close(self) -> None:
        """Close the websocket."""
        self.fail_all("closed by the server")
        await self.ws.close()


class ListeningLink:
    """Requests to a listening tentacle's HTTPS endpoint."""

    def __init__(self, endpoint: str, thumbprint: str, ctx: ssl.SSLContext) -> None:
        self.url = endpoint.rstrip("/") + RPC_PATH
        self.ctx = ctx
        self.session = aiohttp.ClientSession(connector=pinned_connector([thumbprint], limit=8))

    async def call(self, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """POST a request and return the result."""
        request = Request(f"r{next(_ids)}", method, params)
        try:
            async with self.session.post(
                self.url,
                data=messages.encode(request),
                ssl=self.ctx,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as answer:
                body = await answer.read()
                if answer.status != 200:
                    raise TransportError(
                        f"{method}: {self.url} answered HTTP {answer.status}: {body[:200]!r}"
                    )
        except NETWORK_ERRORS as exc:
            raise translate(exc, f"{method}: {self.url}") from exc
        response = messages.decode(body)
        if not isinstance(response, Response):
            raise TransportError(f"{method}: {self.url} sent a request instead of a response")
        return _result(response, method)

    async def close(self) -> None:
        """Close pooled connections."""
        await self.session.close()
