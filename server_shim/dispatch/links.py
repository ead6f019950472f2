"""The server's two ways of calling a tentacle, behind one typed `call`.

- `PollingLink`: the tentacle's websocket is open to us; a request goes down it and
  the response comes back tagged with the same id.
- `ListeningLink`: we connect to the tentacle's endpoint with our certificate as the
  client certificate, pinned to the tentacle's own thumbprint, and POST the request.

``call(TASK_STATUS, StatusParams(...), timeout)`` sends the params struct and returns
the result struct (`tentacle.protocol.rpc_messages`); ``seal``, when given, signs the
request envelope before it leaves (`server_shim.dispatch.signer`). Both raise `TransportError` when
the tentacle cannot be reached, `RemoteError` when it answered with an error, and
`BadAnswer` (naming the machine and the path) when its answer does not fit the type:
that call fails, and nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web

from tentacle.errors import TransportError
from tentacle.net.failures import NETWORK_ERRORS, translate
from tentacle.net.tls import pinned_connector
from tentacle.protocol import messages
from tentacle.protocol.messages import MessageError, Request, Response
from tentacle.protocol.rpc_messages import Call, bad_answer, read_result
from tentacle.protocol.wire import Wire

RPC_PATH = "/rpc/v1"
Seal = Callable[[Request], Request]  # signs a request envelope
P = TypeVar("P", bound=Wire)
R = TypeVar("R", bound=Wire)
_ids = itertools.count(1)


class Link(Protocol):
    """A way to send one request to one tentacle."""

    async def call(self, call: Call[P, R], params: P, timeout: float, seal: Seal | None = None) -> R:
        """Send a request (signed by ``seal``) and return the result (or raise)."""

    async def close(self) -> None:
        """Drop the connection."""


class PollingLink:
    """Requests over the websocket of the polling tentacle ``machine``."""

    def __init__(self, ws: web.WebSocketResponse, machine: str) -> None:
        self.ws = ws
        self.machine = machine
        self.pending: dict[str, asyncio.Future[Response]] = {}

    async def call(self, call: Call[P, R], params: P, timeout: float, seal: Seal | None = None) -> R:
        """Send a request (signed by ``seal``) and wait for its response."""
        request = call.request(f"r{next(_ids)}", params)
        if seal is not None:
            request = seal(request)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.pending[request.id] = future
        try:
            await self.ws.send_frame(messages.encode(request), aiohttp.WSMsgType.TEXT)
            response = await asyncio.wait_for(future, timeout)
        except MessageError as exc:  # set by `refuse`
            raise bad_answer(self.machine, call.method, exc) from exc
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            raise TransportError(
                f"{call.method}: polling connection failed: {exc or type(exc).__name__}"
            ) from exc
        finally:
            self.pending.pop(request.id, None)
        return read_result(call, response, self.machine)

    def deliver(self, response: Response) -> None:
        """Hand a response from the socket to its waiting caller."""
        future = self.pending.get(response.id)
        if future is not None and not future.done():
            future.set_result(response)

    def refuse(self, request_id: str, error: MessageError) -> None:
        """The response to ``request_id`` came back malformed: its call fails, naming the path."""
        future = self.pending.get(request_id)
        if future is not None and not future.done():
            future.set_exception(error)

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
    """Requests to a listening tentacle's HTTPS endpoint; ``machine`` names it in errors."""

    def __init__(self, endpoint: str, thumbprint: str, ctx: ssl.SSLContext, machine: str = "") -> None:
        self.url = endpoint.rstrip("/") + RPC_PATH
        self.machine = machine or self.url
        self.ctx = ctx
        self.session = aiohttp.ClientSession(connector=pinned_connector([thumbprint], limit=8))

    async def call(self, call: Call[P, R], params: P, timeout: float, seal: Seal | None = None) -> R:
        """POST a request (signed by ``seal``) and return the result."""
        request = call.request(f"r{next(_ids)}", params)
        if seal is not None:
            request = seal(request)
        body = await self._post(call, messages.encode(request), timeout)
        try:
            response = messages.decode(body)
        except MessageError as exc:
            raise bad_answer(self.machine, call.method, exc) from exc
        if not isinstance(response, Response):
            raise TransportError(f"{call.method}: {self.url} sent a request instead of a response")
        return read_result(call, response, self.machine)

    async def _post(self, call: Call[Any, Any], data: bytes, timeout: float) -> bytes:
        """The body of a 200 answer to ``data``."""
        try:
            async with self.session.post(
                self.url,
                data=data,
                ssl=self.ctx,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as answer:
                body = await answer.read()
                if answer.status != 200:
                    raise TransportError(
                        f"{call.method}: {self.url} answered HTTP {answer.status}: {body[:200]!r}"
                    )
                return body
        except NETWORK_ERRORS as exc:
            raise translate(exc, f"{call.method}: {self.url}") from exc

    async def close(self) -> None:
        """Close pooled connections."""
        await self.session.close()
