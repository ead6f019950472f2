"""The messages server and tentacle exchange, in both transports.

One service layer, two transports: a listening tentacle receives each request as
the body of ``POST /rpc/v1`` and answers in the response body; a polling tentacle
receives the same request as a websocket text message and answers with another.

    request  {"kind": "request",  "id": "...", "method": "ping", "params": {...}}
    response {"kind": "response", "id": "...", "result": {...}}
           | {"kind": "response", "id": "...", "error": {"code": "...", "message": "..."}}

Decoding validates the shape and raises `MessageError`; it does no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tentacle.errors import InvalidInput

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class MessageError(InvalidInput):
    """A message that does not have the agreed shape."""


@dataclass(frozen=True)
class Request:
    """A call from the server to a tentacle."""

    id: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {"kind": "request", "id": self.id, "method": self.method, "params": self.params}


@dataclass(frozen=True)
class Response:
    """The answer to one `Request`: a result or an error."""

    id: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        body: dict[str, Any] = {"kind": "response", "id": self.id}
        if self.error is not None:
            body["error"] = self.error
        else:
            body["result"] = self.result or {}
        return body

    @classmethod
    def failure(cls, request_id: str, code: str, message: str) -> Response:
        """An error response."""
        return cls(request_id, error={"code": code, "message": message})


def encode(message: Request | Response) -> str:
    """Serialize a message to JSON text."""
    return json.dumps(message.to_json(), separators=(",", ":"))


def decode(text: str | bytes) -> Request | Response:
    """Parse and validate one message."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(text)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise MessageError(f"message is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MessageError("message must be a JSON object")
    kind = body.get("kind")
    if kind == "request":
        return _decode_request(body)
    if kind == "response":
        return _decode_response(body)
    raise MessageError(f"kind: must be 'request' or 'response', not {kind!r}")


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 200:
        raise MessageError(f"{key}: must be a non-empty string of at most 200 characters")
    return value


def _decode_request(body: dict[str, Any]) -> Request:
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise MessageError("params: must be an object")
    return Request(_text(body, "id"), _text(body, "method"), params)


def _decode_response(body: dict[str, Any]) -> Response:
    request_id = _text(body, "id")
    error = body.get("error")
    if error is not None:
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            raise MessageError("error: must be an object with a message")
        return Response(request_id, error=error)
    result = body.get("result", {})
    if not isinstance(result, dict):
        raise MessageError("result: must be an object")
    return Response(request_id, result=result)
