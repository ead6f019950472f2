"""HTTP plumbing shared by every route: errors, JSON bodies, API keys.

Every error leaves as ``{"error": {"code", "message", "details"}}``: `ApiError` and
our own `TentacleError`s with a 4xx status, aiohttp's HTTP exceptions with theirs,
and anything else as a logged 500 whose body says nothing about internals.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server_shim.store import accounts
from server_shim.store.database import Database
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.json_fields import text_problem

log = logging.getLogger("server_shim.api.middleware")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DB = web.AppKey("db", Database)
API_KEY_NAME = web.RequestKey("api_key_name", str)
MAX_JSON_BYTES = 2 * 1024 * 1024
MAX_JSON_DEPTH = 64


class ApiError(Exception):
    """An error the caller can fix, with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    """The JSON error body of design.md."""
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details or {}}}, status=status
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into a JSON error; never a traceback in a response."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details)
    except TentacleError as exc:
        code = getattr(exc, "api_status", 400)
        return error_response(code, _code(type(exc).__name__), exc.message, exc.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _code(exc.reason), exc.text or exc.reason)
    except Exception:
        log.exception("api.crashed path=%s", request.path)
        return error_response(500, "internal", "internal server error (logged on the server)")


def _code(name: str) -> str:
    """'PackageNotFound' and 'Not Found' both become 'package-not-found' / 'not-found'."""
    out = "".join("-" + c.lower() if c.isupper() else c for c in name.replace(" ", ""))
    return out.strip("-") or "error"


def _depth(value: Any, limit: int) -> int:
    stack, deepest = [(value, 1)], 1
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or a 4xx naming what is wrong."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise ApiError(413, "too-large", f"request body over {MAX_JSON_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what has arrived, not n bytes: loop, and stop as soon as it is too big.
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            raise ApiError(413, "too-large", f"request body over {MAX_JSON_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "bad-json", f"request body is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad-json", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad-json", "request body must be a JSON object")
    if _depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ApiError(400, "bad-json", f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = True, default: Any = None) -> Any:
    """A typed field of a JSON body; wrong or missing is a 400 naming it."""
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, "invalid", f"{name}: required", {"field": name})
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, "invalid", f"{name}: must be {_kind(kind)}", {"field": name})
    if isinstance(value, str):
        _check_text(name, value)
    return value


def string_list(body: dict[str, Any], name: str, *, required: bool = True) -> list[str]:
    """A list of strings field."""
    value = field(body, name, list, required=required, default=[])
    if not all(isinstance(item, str) for item in value):
        raise ApiError(400, "invalid", f"{name}: must be a list of strings", {"field": name})
    for item in value:
        _check_text(name, item)
    return list(value)


def _check_text(name: str, value: str) -> None:
    """A lone surrogate (JSON allows its escape) would crash whatever encodes it next: SQLite, hashing."""
    problem = text_problem(value)
    if problem is not None:
        raise ApiError(400, "invalid", f"{name}: {problem}", {"field": name})


def _kind(kind: type) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "an object"}.get(
        kind, kind.__name__
    )


@web.middleware
async def api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routes under /api/{space}/ need a valid X-Api-Key."""
    if not _needs_key(request.path):
        return await handler(request)
    key = request.headers.get("X-Api-Key", "")
    name = await request.app[DB].run(accounts.api_key_name, key) if key else None
    if name is None:
        event(log, "api.unauthorized", logging.WARNING, path=request.path, peer=request.remote)
        reason = "missing X-Api-Key header" if not key else "invalid API key"
        return error_response(401, "unauthorized", reason)
    request[API_KEY_NAME] = name
    return await handler(request)


# Tentacles call these: registration proves itself with a token, the port report with the
# machine's registered certificate.
_TENTACLE_ROUTES = ("/api/machines/register/", "/api/machines/listening-port/")


def _needs_key(path: str) -> bool:
    return path.startswith("/api/") and not path.startswith(_TENTACLE_ROUTES)
