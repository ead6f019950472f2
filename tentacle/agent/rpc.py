"""The tentacle's service layer: what the server can ask, whatever the transport.

Both transports hand every decoded `Request` to `Service.handle` and send back the
`Response` it returns. A handler raising `TentacleError` becomes an error response
with its message; anything else is a bug, logged with its traceback, and answered
with a generic error so that no internals leak to the peer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tentacle import __version__
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.messages import Request, Response

log = logging.getLogger("tentacle.agent.rpc")
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Service:
    """Routes requests to handlers; `register` adds the methods of later layers."""

    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.mode = mode
        self.last_contact: float | None = None
        self._handlers: dict[str, Handler] = {"ping": self._ping}

    def register(self, method: str, handler: Handler) -> None:
        """Serve `method` with `handler`."""
        self._handlers[method] = handler

    async def handle(self, request: Request) -> Response:
        """Answer one request; never raises."""
        self.last_contact = time.time()
        handler = self._handlers.get(request.method)
        if handler is None:
            return Response.failure(request.id, "unknown-method", f"unknown method {request.method!r}")
        try:
            return Response(request.id, result=await handler(request.params))
        except TentacleError as exc:
            return Response.failure(request.id, type(exc).__name__, exc.message)
        except Exception:
            log.exception("service.handler_crashed method=%s", request.method)
            return Response.failure(request.id, "internal", "the tentacle failed to handle the request")

    async def _ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "version": __version__, "time": time.time()}


def log_event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log an event of the service layer."""
    event(log, name, level=level, **fields)
