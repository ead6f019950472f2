"""The envelope of the messages server and tentacle exchange, in both transports.

One service layer, two transports: a listening tentacle receives each request as
the body of ``POST /rpc/v1`` and answers in the response body; a polling tentacle
receives the same request as a websocket text message and answers with another.

    request  {"kind": "request",  "id": "...", "method": "ping", "params": {...}, "signature"?: {...}}
    response {"kind": "response", "id": "...", "result": {...}}
           | {"kind": "response", "id": "...", "error": {"code": "...", "message": "..."}}

`Request` and `Response` are one union tagged by ``kind``; ``method`` is a `Method`.
``signature`` (`tentacle.protocol.signing`) is the server's signature over the method and
the params' exact bytes; a request without one is encoded without the field.
``params`` and ``result`` stay raw JSON here: their type depends on the method, and
`tentacle.protocol.rpc_messages` reads them (`read_params`, `read_result`) into the
method's own structs, so each body is parsed once, straight into its type.

Decoding raises `MessageError` whose message starts with the path of what is wrong
(``method: invalid enum value 'pong'``, ``params.gateIndex: expected an integer``).
A request that fails but whose ``id`` can be read is answered with an error
response (`refusal`), so its caller hears why at once rather than timing out. Pure.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Final, TypeVar

import msgspec

from tentacle.protocol import wire
from tentacle.protocol.signing import Signature
from tentacle.protocol.wire import Wire, WireError

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
MAX_ERROR_TEXT: Final = 64 * 1024  # an error message longer than this is cut, not refused
T = TypeVar("T")

MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
EMPTY_PARAMS: Final = msgspec.Raw(b"{}")
_NO_RESULT: Final = msgspec.Raw()


class Method(StrEnum):
    """The methods a tentacle serves."""

    PING = "ping"
    TASK_START = "task.start"
    TASK_GATE = "task.gate"
    TASK_STATUS = "task.status"
    TASK_CANCEL = "task.cancel"
    TASK_FINISH = "task.finish"
    TRUST_ROTATE = "trust.rotate"


class MessageError(WireError):
    """A message that does not have the agreed shape; ``details["path"]`` says where."""


class ErrorBody(Wire, frozen=True):
    """Why a request failed: a short code (the error class) and a message for people."""

    code: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    message: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_TEXT)]


class Request(Wire, frozen=True, tag="request", tag_field="kind", omit_defaults=True):
    """A call from the server to a tentacle; ``params`` is the method's params struct as JSON."""

    id: MessageId
    method: Method
    params: msgspec.Raw = EMPTY_PARAMS
    signature: Signature | None = None

    @classmethod
    def of(cls, request_id: str, method: Method | str, params: Any = None) -> Request:
        """A request carrying ``params`` (a struct, or plain JSON values; None is ``{}``)."""
        raw = EMPTY_PARAMS if params is None else msgspec.Raw(wire.encode(params))
        return cls(id=request_id, method=Method(method), params=raw)


class Response(Wire, frozen=True, tag="response", tag_field="kind", omit_defaults=True):
    """The answer to one `Request`: a result (raw JSON of the method's result struct) or an error."""

    id: MessageId
    result: msgspec.Raw = _NO_RESULT
    error: ErrorBody | None = None

    def __post_init__(self) -> None:
        """Exactly one of ``result`` and ``error`` (msgspec reports this as a decode error)."""
        if (self.error is None) == (len(self.result) == 0):
            raise ValueError("a response has exactly one of result and error")

    @classmethod
    def success(cls, request_id: str, result: Any) -> Response:
        """A response carrying ``result`` (a struct, or plain JSON values)."""
        return cls(id=request_id, result=msgspec.Raw(wire.encode(result)))

    @classmethod
    def failure(cls, request_id: str, code: str, message: str) -> Response:
        """An error response (a message over `MAX_ERROR_TEXT` characters is cut)."""
        body = ErrorBody(code=code[:100] or "error", message=message[:MAX_ERROR_TEXT])
        return cls(id=request_id, error=body)


Message = Request | Response
_DECODER: Final = msgspec.json.Decoder(Message)


class _Peek(msgspec.Struct):
    """What can be read of a message that failed to decode: whose it is (other fields ignored)."""

    kind: Any = None
    id: Any = None


def encode(message: Message) -> bytes:
    """A message's JSON bytes."""
    return wire.encode(message)


def decode(data: str | bytes) -> Message:
    """Parse and check one message; raises `MessageError` naming the path of the problem."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(
            f"message: {len(data)} bytes is over the limit of {MAX_MESSAGE_BYTES}",
            details={"path": ""},
        )
    return parse(data, _DECODER, "message")


def parse(data: str | bytes, decoder: msgspec.json.Decoder[T], root: str) -> T:
    """Decode ``data`` with ``decoder``; a `MessageError` names the path under ``root``.

    ``root`` is what ``data`` is within the message (``params``, ``result``), or
    ``message`` for the message itself, whose paths then need no prefix.
    """
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        path, problem = _where(exc)
        if root != "message":
            path = f"{root}.{path}" if path else root
        raise MessageError(f"{path or root}: {problem}", details={"path": path}) from exc


def _where(exc: msgspec.DecodeError | RecursionError) -> tuple[str, str]:
    """(path, problem) of a decoding failure."""
    if isinstance(exc, RecursionError):
        return "", "nested too deep"
    return wire.describe(exc)


def peek(data: str | bytes) -> tuple[str, str] | None:
    """(kind, id) of a message that failed to decode, when both can be read; else None."""
    try:
        found = msgspec.json.decode(data, type=_Peek)
    except (msgspec.DecodeError, RecursionError):
        return None
    kind, message_id = found.kind, found.id
    if kind not in ("request", "response") or not isinstance(message_id, str):
        return None
    if not 0 < len(message_id) <= 200:
        return None
    return kind, message_id


def refusal(data: str | bytes, error: MessageError) -> Response | None:
    """The error response to a request that failed to decode, when its id can be read.

    A method this side does not know is ``unknown-method``; any other problem is
    ``bad-message``. Either way the message names the path.
    """
    found = peek(data)
    if found is None or found[0] != "request":
        return None
    code = "unknown-method" if error.details.get("path") == "method" else "bad-message"
    return Response.failure(found[1], code, error.message)
