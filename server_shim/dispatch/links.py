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

Nothing is read without a bound (`server_shim.dispatch.reply_limits`): a listening
tentacle's answer is read up to the call's limit, at a minimum rate once it started; a
polling tentacle's messages are bounded by the websocket's message limit, each answer by
its call's, and a message in progress must keep the same rate (`InboundMeter`). An
agent over a limit is `Misbehaved`: its call fails for good and its connection closes.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web

from server_shim.dispatch.reply_limits import (
    Misbehaved,
    ProgressRule,
    read_capped,
    reply_limit,
    too_large,
    too_slow,
)
from tentacle.errors import TransportError
from tentacle.net.failures import NETWORK_ERRORS, translate
from tentacle.net.tls import pinned_connector
from tentacle.protocol import messages
from tentacle.protocol.messages import MessageError, Method, Request, Response
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


class InboundMeter:
    """The bytes of a websocket message in progress, and whether they come fast enough.

    Fed every received chunk (`arrived`) and told of every whole frame (`whole`), so an
    idle socket has no message in progress and a dribbled one falls behind its rule.
    """

    def __init__(self) -> None:
        self.rule: ProgressRule | None = None

    def arrived(self, count: int) -> bool:
        """``count`` bytes came in; whether the message they belong to is behind."""
        if self.rule is None:
            self.rule = ProgressRule()
        self.rule.add(count)
        return self.rule.behind()

    def whole(self) -> None:
        """A frame was completed: nothing is in progress."""
        self.rule = None


class PollingLink:
    """Requests over the websocket of the polling tentacle ``machine``."""

    def __init__(self, ws: web.WebSocketResponse, machine: str) -> None:
        self.ws = ws
        self.machine = machine
        self.meter = InboundMeter()
        self.pending: dict[str, tuple[asyncio.Future[Response], Method]] = {}
        self.misbehaved: Misbehaved | None = None

    async def call(self, call: Call[P, R], params: P, timeout: float, seal: Seal | None = None) -> R:
        """Send a request (signed by ``seal``) and wait for its response."""
        request = call.request(f"r{next(_ids)}", params)
        if seal is not None:
            request = seal(request)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.pending[request.id] = (future, call.method)
        try:
            if self.misbehaved is not None:
                raise self.misbehaved
            await self.ws.send_frame(messages.encode(request), aiohttp.WSMsgType.TEXT)
            response = await asyncio.wait_for(future, timeout)
        except MessageError as exc:  # set by `refuse`
            raise bad_answer(self.machine, call.method, exc) from exc
        except TimeoutError as exc:
            rule = self.meter.rule
            if rule is not None and rule.behind():  # a message is being dribbled
                slow = too_slow(self.machine, call.method, rule.received, rule.elapsed())
                self.cut(slow)
                raise slow from exc
            raise TransportError(
                f"{call.method}: polling connection failed: no answer in {timeout:g} s"
            ) from exc
        except (ConnectionError, RuntimeError) as exc:
            raise TransportError(
                f"{call.method}: polling connection failed: {exc or type(exc).__name__}"
            ) from exc
        finally:
            self.pending.pop(request.id, None)
        return read_result(call, response, self.machine)

    def deliver(self, response: Response, size: int) -> None:
        """Hand a response of ``size`` bytes from the socket to its waiting caller."""
        found = self.pending.get(response.id)
        if found is None or found[0].done():
            return
        future, method = found
        limit = reply_limit(method)
        if size > limit:
            self.cut(too_large(self.machine, method, size, limit))
            return
        future.set_result(response)

    def refuse(self, request_id: str, error: MessageError) -> None:
        """The response to ``request_id`` came back malformed: its call fails, naming the path."""
        found = self.pending.get(request_id)
        if found is not None and not found[0].done():
            found[0].set_exception(error)

    def cut(self, error: Misbehaved) -> None:
        """The tentacle broke a limit: every waiting call fails with ``error``, the socket closes."""
        self.misbehaved = self.misbehaved or error
        self._fail(self.misbehaved)
        closing = asyncio.ensure_future(self.ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION))
        closing.add_done_callback(lambda done: done.cancelled() or done.exception())

    def waiting(self) -> str:
        """The methods of the calls waiting for an answer, for a message that names them."""
        return "/".join(sorted({str(method) for _, method in self.pending.values()})) or "a message"

    def fail_all(self, reason: str) -> None:
        """The socket closed: every waiting call fails now, not at its timeout."""
        self._fail(ConnectionError(reason))

    def _fail(self, error: BaseException) -> None:
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(error)

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
        """The body of a 200 answer to ``data``, read within the call's limits."""
        try:
            async with self.session.post(
                self.url,
                data=data,
                ssl=self.ctx,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as answer:
                body = await self._read(call.method, answer)
                if answer.status != 200:
                    raise TransportError(
                        f"{call.method}: {self.url} answered HTTP {answer.status}: {body[:200]!r}"
                    )
                return body
        except NETWORK_ERRORS as exc:
            raise translate(exc, f"{call.method}: {self.url}") from exc

    async def _read(self, method: Method, answer: aiohttp.ClientResponse) -> bytes:
        """The answer's body, or `Misbehaved` (and the connection closed) past a limit."""
        limit = reply_limit(method)
        rule = ProgressRule()
        if answer.content_length is not None and answer.content_length > limit:
            answer.close()
            raise too_large(self.machine, method, answer.content_length, limit)
        try:
            body = await read_capped(answer.content, limit, rule)
        except TimeoutError:
            answer.close()
            raise too_slow(self.machine, method, rule.received, rule.elapsed()) from None
        if body is None:
            answer.close()
            raise too_large(self.machine, method, f"more than {limit}", limit)
        return body

    async def close(self) -> None:
        """Close pooled connections."""
        await self.session.close()
