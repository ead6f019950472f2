"""The tentacle's service layer: what the server can ask, whatever the transport.

Both transports hand every decoded `Request` to `Service.handle` and send back the
`Response` it returns. A handler is typed (`serve(call, handler)`): the service reads
the params into the method's struct (`tentacle.protocol.rpc_messages`) and sends the
result struct the handler returns; params that do not fit are an error response naming
the path (``params.gateIndex: expected an integer``) and never reach the handler. A
handler raising `TentacleError` becomes an error response with its message; anything
else is a bug, logged with its traceback, and answered with a generic error so that no
internals leak to the peer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast, get_args

from tentacle import __version__
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.messages import Method, Request, Response
from tentacle.protocol.rpc_messages import PING, Call, Mode, NoParams, PingResult, read_params
from tentacle.protocol.wire import Wire

log = logging.getLogger("tentacle.agent.rpc")
Guard = Callable[[Request], None]  # raises a TentacleError to refuse a request before its handler
Answer = Callable[[Request], Awaitable[Wire]]
P = TypeVar("P", bound=Wire)
R = TypeVar("R", bound=Wire)


class Service:
    """Routes requests to handlers by method; `serve` adds the methods of later layers."""

    def __init__(self, name: str, mode: str, guard: Guard | None = None) -> None:
        if mode not in get_args(Mode):
            raise ValueError(f"mode: must be 'listening' or 'polling', not {mode!r}")
        self.name = name
        self.mode = cast(Mode, mode)
        self.guard = guard
        self.last_contact: float | None = None
        self._answers: dict[Method, Answer] = {}
        self.serve(PING, self._ping)

    def serve(self, call: Call[P, R], handler: Callable[[P], Awaitable[R]]) -> None:
        """Serve ``call.method`` with a typed handler."""

        async def answer(request: Request) -> Wire:
            return await handler(read_params(call, request))

        self._answers[call.method] = answer

    async def handle(self, request: Request) -> Response:
        """Answer one request; never raises."""
        self.last_contact = time.time()
        answer = self._answers.get(request.method)
        if answer is None:
            return Response.failure(request.id, "unknown-method", f"unknown method {request.method.value!r}")
        try:
            if self.guard is not None:
                self.guard(request)
            return Response.success(request.id, await answer(request))
        except TentacleError as exc:
            return Response.failure(request.id, type(exc).__name__, exc.message)
        except Exception:
            log.exception("service.handler_crashed method=%s", request.method.value)
            return Response.failure(request.id, "internal", "the tentacle failed to handle the request")

    async def _ping(self, params: NoParams) -> PingResult:
        return PingResult(name=self.name, mode=self.mode, version=__version__, time=time.time())


def log_event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log an event of the service layer."""
    event(log, name, level=level, **fields)
