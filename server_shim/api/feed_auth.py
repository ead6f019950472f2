"""Who may use the built-in feed, and how NuGet clients are told no.

Credentials, in the order they are looked for (the first one present decides):

    X-NuGet-ApiKey: KEY              what `nuget push/delete -ApiKey KEY` sends
    X-Api-Key: KEY                   what operators' tools send
    Authorization: Basic user:KEY    what nuget.config packageSourceCredentials send (any user)
    a client certificate             a registered tentacle that was not removed (reads only)

What each request needs: the service index is public (it lists URLs only, and `nuget push`
reads it before it sends its key); a push needs the scope ``feed:push``, a delete
``feed:delete``, anything else ``feed:read`` (keys without ``--scope`` have all three).

A refusal says which credentials were expected: 401 (none, or a key nobody issued) with
``WWW-Authenticate: Basic``, so that a NuGet client holding nuget.config credentials
answers the challenge with them; 403 for known credentials that may not do this. Errors on
feed paths (the handlers' too) carry their message in the status line's reason phrase, which
is what NuGet clients print ("409 (Conflict - Web 1.0.0 is already in the built-in feed ...)").
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import sqlite3
from http import HTTPStatus

from aiohttp import web

from server_shim.api.middleware import DB, Handler, error_response
from server_shim.store import accounts
from server_shim.store import machine_rows as machines
from tentacle.common.logs import event
from tentacle.errors import Forbidden, TentacleError, Unauthorized
from tentacle.net.tls import peer_thumbprint

log = logging.getLogger("server_shim.api.feed_auth")
PREFIX = "/nuget/"
PUBLIC = frozenset({"/nuget/v3/index.json"})
PUBLISH = "/nuget/v3/package"
FEED_CALLER = web.RequestKey("feed_caller", str)
REALM = 'Basic realm="server-shim feed", charset="UTF-8"'
_READS = (
    "HTTP Basic with an API key as the password (nuget.config packageSourceCredentials, any user name),"
    " an X-NuGet-ApiKey or X-Api-Key header, or a registered tentacle's certificate"
)
_WRITES = "an API key in X-NuGet-ApiKey (nuget push/delete -ApiKey KEY), X-Api-Key or HTTP Basic"
_UNSAFE_REASON = re.compile(r"[^\x20-\x7e]")


class FeedUnauthorized(Unauthorized):
    """No credentials, or credentials nobody issued."""

    CODE = "unauthorized"


class FeedForbidden(Forbidden):
    """Known credentials that may not do this."""

    CODE = "forbidden"


class UnregisteredCertificate(Forbidden):
    """A client certificate of no registered machine."""

    CODE = "unregistered"


class RevokedCertificate(Forbidden):
    """The certificate of a removed machine."""

    CODE = "revoked"


def needed_scope(method: str, path: str) -> str | None:
    """The scope a request needs (None: public)."""
    if path in PUBLIC and method in ("GET", "HEAD"):
        return None
    if path == PUBLISH or path.startswith(PUBLISH + "/"):
        if method == "DELETE":
            return accounts.FEED_DELETE
        if method in ("PUT", "POST"):
            return accounts.FEED_PUSH
    return accounts.FEED_READ


def presented_key(request: web.Request) -> tuple[str, str] | None:
    """(the key, where it came from), or None when the request carries no key."""
    for header in ("X-NuGet-ApiKey", "X-Api-Key"):
        if value := request.headers.get(header, ""):
            return value, header
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        password = ""
    return password, "HTTP Basic"


def _expected(scope: str) -> str:
    if scope == accounts.FEED_READ:
        return f"reading the built-in feed needs {_READS}"
    action = "pushing" if scope == accounts.FEED_PUSH else "deleting"
    return f"{action} packages needs {_WRITES}, of a key with scope {scope} (or created without --scope)"


async def _check_key(request: web.Request, key: str, where: str, scope: str) -> str:
    if not key:
        raise FeedUnauthorized(f"{where} holds no API key; {_expected(scope)}")
    found = await request.app[DB].run(accounts.api_key, key)
    if found is None:
        raise FeedUnauthorized(f"the API key in {where} is not valid; {_expected(scope)}")
    if not found.allows(scope):
        raise FeedForbidden(
            f"API key {found.name!r} has scopes {found.shown_scopes()}, not {scope}; {_expected(scope)}",
            details={"scopes": sorted(found.scopes), "needed": scope},
        )
    return f"key:{found.name}"


def _certificate_refusal(conn: sqlite3.Connection, presented: str) -> TentacleError | None:
    details = {"presentedThumbprint": presented}
    if machines.is_revoked(conn, presented):
        return RevokedCertificate(f"certificate {presented} was revoked (machine removed)", details=details)
    if machines.by_thumbprint(conn, presented) is None:
        return UnregisteredCertificate(f"certificate {presented} is not registered", details=details)
    return None


async def authorize(request: web.Request) -> str | None:
    """Who the caller is ('key:NAME', 'tentacle:THUMBPRINT'; None for public); raises refusals."""
    scope = needed_scope(request.method, request.path)
    if scope is None:
        return None
    key = presented_key(request)
    if key is not None:
        return await _check_key(request, *key, scope)
    presented = peer_thumbprint(request.transport)
    if presented is None:
        raise FeedUnauthorized(f"no credentials: {_expected(scope)}")
    refused = await request.app[DB].run(_certificate_refusal, presented)
    if refused is not None:
        raise refused
    if scope != accounts.FEED_READ:
        raise FeedForbidden(f"a tentacle's certificate may only read the feed; {_expected(scope)}")
    return f"tentacle:{presented}"


def reason_phrase(status: int, message: str) -> str:
    """The status line's phrase with the message, printable ASCII on one line, bounded."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return _UNSAFE_REASON.sub("?", f"{phrase} - {message}")[:512]


def nuget_error(request: web.Request, exc: TentacleError) -> web.Response:
    """The JSON error, with the message as reason phrase, and a Basic challenge on 401."""
    status = exc.http_status
    if status in (401, 403):
        event(log, "feed.refused", logging.WARNING, path=request.path, peer=request.remote, reason=exc.code)
    headers = {"WWW-Authenticate": REALM} if status == 401 else {}
    return error_response(
        status, exc.code, exc.message, exc.details, headers=headers, reason=reason_phrase(status, exc.message)
    )


@web.middleware
async def feed_access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Paths under /nuget/: credentials checked, and every error answered as NuGet clients show it."""
    if not request.path.startswith(PREFIX):
        return await handler(request)
    try:
        caller = await authorize(request)
        if caller is not None:
            request[FEED_CALLER] = caller
        return await handler(request)
    except TentacleError as exc:
        if exc.http_status >= 500:
            raise  # the errors middleware logs it and answers without internals
        return nuget_error(request, exc)
