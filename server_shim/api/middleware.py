"""HTTP plumbing shared by every route: errors, JSON bodies, API keys.

This is the one place where errors become HTTP statuses. Every error leaves as
``{"error": {"code", "message", "details"}}``: our own `TentacleError`s with the status
their class declares (see tentacle.errors), aiohttp's HTTP exceptions with theirs, and
anything else as a logged 500 whose body says nothing about internals.

Request bodies come in through `read_body` (a typed `Body` from `bodies`) or, for a
document whose rules live elsewhere, `read_document`; both read at most 2 MiB (413
beyond), refuse what is not a JSON object (``bad-json``), and name the path of any other
problem (``environmentNames[1]: expected a string, got an integer``). Answers go out
through `answer`, encoded from structs.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from server_shim.api.bodies import Body, ErrorBody, ErrorDetail, refusal
from server_shim.store import accounts, reaction_keys
from server_shim.store.database import Database
from tentacle.common.logs import event
from tentacle.errors import BadJson, TentacleError, TooLarge, kebab
from tentacle.protocol import wire
from tentacle.protocol.documents import index_path, key_path, text_problem

log = logging.getLogger("server_shim.api.middleware")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DB = web.AppKey("db", Database)
API_KEY_NAME = web.RequestKey("api_key_name", str)
MAX_JSON_BYTES = 2 * 1024 * 1024
MAX_JSON_DEPTH = 64
T = TypeVar("T")
# A JSON escape of a high surrogate (uD800-uDBFF) not followed by a low one (uDC00-uDFFF),
# or a low one alone; an even run of backslashes before it is escaped backslashes, not an escape.
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
B = TypeVar("B", bound=Body)
# The body's bytes once read: a route that looked at them first (the Octopus adapter tells the
# two shapes of a shared path apart) leaves them here for the handler that reads them next.
RAW_BODY = web.RequestKey("raw_body", bytes)


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> web.Response:
    """The JSON error body of design.md; `reason` replaces the status line's phrase (NuGet shows it).

    When ``details["problems"]`` lists several (texts, or ``{path, message}``), each is one of
    Octopus's ``Errors`` (its clients show the message, then each of them on a line).
    """
    details = details or {}
    problems = details.get("problems")
    errors = [_problem_text(p) for p in problems] if isinstance(problems, list) and len(problems) > 1 else []
    detail = ErrorDetail(code=code, message=message, details=details)
    response = answer(ErrorBody(error=detail, error_message=message, errors=errors), status)
    response.headers.update(headers or {})
    if reason is not None:
        response.set_status(status, reason)
    return response


def _problem_text(problem: Any) -> str:
    if isinstance(problem, dict) and "message" in problem:
        path = problem.get("path")
        return f"{path}: {problem['message']}" if path else str(problem["message"])
    return str(problem)


def answer(body: Any, status: int = 200) -> web.Response:
    """A JSON answer encoded from a struct (or, for documents owned elsewhere, plain JSON values)."""
    try:
        data = wire.encode(body)
    except UnicodeEncodeError:
        # A lone surrogate (an error echoing a URL, a line a script printed) has no UTF-8 form:
        # send it as the escape repr() would show rather than fail the whole answer.
        data = wire.encode(_escaped(wire.to_builtins(body)))
    return web.Response(body=data, status=status, content_type="application/json")


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(key): _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into a JSON error; never a traceback in a response."""
    try:
        return await handler(request)
    except TentacleError as exc:
        if exc.http_status >= 500:
            log.error("api.failed path=%s error=%s reason=%s", request.path, exc.code, exc.message)
        return error_response(exc.http_status, exc.code, exc.message, exc.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, kebab(exc.reason), exc.text or exc.reason)
    except Exception:
        log.exception("api.crashed path=%s", request.path)
        return error_response(500, "internal", "internal server error (logged on the server)")


async def read_raw(request: web.Request) -> bytes:
    """The request's body (at most 2 MiB, 413 beyond), read once: later calls get the same bytes."""
    raw = request.get(RAW_BODY)
    if raw is None:
        raw = request[RAW_BODY] = await read_limited(request, MAX_JSON_BYTES, "request body")
    return raw


async def read_body(request: web.Request, kind: type[B]) -> B:
    """The request's body as `kind`, strictly: a 400 naming the path of what is wrong."""
    body = _decode(await read_raw(request), kind)
    _check_tree(body, MAX_JSON_DEPTH)
    body.check()
    return body


async def read_document(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object whose rules live elsewhere (the process document)."""
    document = _decode(await read_raw(request), dict[str, Any])
    _check_tree(document, MAX_JSON_DEPTH)
    return document


async def read_limited(request: web.Request, limit: int, what: str) -> bytes:
    """The body's bytes; TooLarge as soon as they pass ``limit``, before the rest is read."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"{what} over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what has arrived, not n bytes: loop, and stop as soon as it is too big.
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, kind: type[T]) -> T:
    """`wire.decode`, with what is not a JSON object at all told apart (BadJson) from a misfit."""
    if not raw.lstrip().startswith(b"{"):
        raise BadJson("request body must be a JSON object")
    try:
        return wire.decode(raw, kind)
    except RecursionError as exc:  # msgspec's own guard, on nesting far past ours
        raise BadJson(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from exc
    except wire.WireError as exc:
        if isinstance(exc.__cause__, msgspec.ValidationError):
            raise  # well-formed JSON of the wrong shape: the message names the path
        raise BadJson(f"request body is not valid JSON: {_why_malformed(raw, exc)}") from exc


def _why_malformed(raw: bytes, exc: wire.WireError) -> str:
    """msgspec's reason, except for a lone surrogate escape, which it calls "truncated" at times."""
    lone = _LONE_SURROGATE.search(raw)
    if lone is None:
        return str(exc.__cause__)
    escape = lone.group(1).decode("ascii")
    return f"{escape} at byte {lone.start(1)} is half a surrogate pair (text must be valid Unicode)"


def _check_tree(value: Any, limit: int) -> None:
    """Refuse nesting deeper than `limit` and text nothing downstream can hold, naming the path.

    JSON allows ``\\u0000``, which no script argument or environment variable can carry;
    a lone-surrogate escape (``\\ud800``) would crash whatever encodes it next (SQLite,
    hashing). msgspec refuses the surrogates today; this keeps that promise ours.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _check_text(path, item)
        elif depth > limit:
            raise BadJson(f"{path}: nests deeper than {limit} levels", details={"path": path})
        else:
            stack.extend(reversed(_children(item, path, depth + 1)))


def _children(item: Any, path: str, depth: int) -> list[tuple[Any, str, int]]:
    """The values inside a struct, object or list, each with its path; keys are checked here."""
    if isinstance(item, msgspec.Struct):
        return [(getattr(item, name), key_path(path, shown), depth) for name, shown in _fields(type(item))]
    if isinstance(item, dict):
        for key in item:
            _check_text(path or "body", key, "a key ")
        return [(child, key_path(path, key), depth) for key, child in item.items()]
    if isinstance(item, list | tuple):
        return [(child, index_path(path, index), depth) for index, child in enumerate(item)]
    return []


@functools.cache
def _fields(kind: type[msgspec.Struct]) -> tuple[tuple[str, str], ...]:
    """(attribute, wire name) of a struct's fields, once per class: msgspec works them out from
    the annotations on every call, which took half the event loop's time per create request."""
    return tuple((f.name, f.encode_name) for f in msgspec.structs.fields(kind))


def _check_text(path: str, value: str, what: str = "") -> None:
    problem = text_problem(value)
    if problem is not None:
        raise refusal(path, what + problem)


@web.middleware
async def api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routes under /api/{space}/ need a valid X-Api-Key without a narrower scope than "all"."""
    if not _needs_key(request.path):
        return await handler(request)
    key = request.headers.get("X-Api-Key", "") or (
        request.query.get("apiKey", "") if _HOOK.match(request.path) else ""
    )
    found = await _known_key(request.app[DB], key) if key else None
    if found is None and key.startswith(reaction_keys.PREFIX):  # a reaction script's key: its space only
        name = await request.app[DB].run(reaction_keys.check, key, request.method, request.path)
        if name is not None:
            request[API_KEY_NAME] = name
            return await handler(request)
    if found is None:
        event(log, "api.unauthorized", logging.WARNING, path=request.path, peer=request.remote)
        reason = "missing X-Api-Key header" if not key else "invalid API key"
        return error_response(401, "unauthorized", reason)
    if not found.allows(accounts.ALL):
        event(log, "api.forbidden", logging.WARNING, path=request.path, key=found.name)
        message = (
            f"API key {found.name!r} is limited to {found.shown_scopes()}: the API needs a key"
            " created without --scope"
        )
        return error_response(403, "forbidden", message, {"scopes": sorted(found.scopes)})
    request[API_KEY_NAME] = found.name
    return await handler(request)


# A webhook's sender may put the key in the query (?apiKey=), as many services can only give a URL.
_HOOK = re.compile(r"^/api/[^/]+/hooks/[^/]+/v1\Z")

# Tentacles call these: registration proves itself with a token, the port report with the
# machine's registered certificate.
_TENTACLE_ROUTES = ("/api/machines/register/", "/api/machines/listening-port/")

# Valid keys seen lately, by their digest (never the key itself): a request with one costs no
# trip to the database thread. A key replaced by `api-key create` works on for at most this long.
KEY_MEMORY_SECONDS = 2.0
_KEY_MEMORY_MAX = 1024
_recent_keys: dict[str, tuple[accounts.ApiKey, float]] = {}


async def _known_key(db: Database, key: str) -> accounts.ApiKey | None:
    """The API key's name and scopes (remembered for `KEY_MEMORY_SECONDS`), or None when invalid."""
    digest, now = accounts.digest(key), time.monotonic()
    remembered = _recent_keys.get(digest)
    if remembered is not None and remembered[1] > now:
        return remembered[0]
    found = await db.run(accounts.api_key, key)
    if found is not None:
        if len(_recent_keys) >= _KEY_MEMORY_MAX:
            _recent_keys.clear()
        _recent_keys[digest] = (found, now + KEY_MEMORY_SECONDS)
    return found


def _needs_key(path: str) -> bool:
    return path.startswith("/api/") and not path.startswith(_TENTACLE_ROUTES)
