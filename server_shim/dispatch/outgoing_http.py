"""A reaction's HTTP action: the request built from templates, signed, and sent where it may go.

How it works. `build` fills the method, URL, headers and body from the event
(tentacle.protocol.templates) and adds ``X-Tentacle-Event``, ``X-Tentacle-Delivery`` (the
delivery's id, the same on every attempt) and, when the reaction has a secret,
``X-Tentacle-Signature: sha256=HEX``, the HMAC-SHA256 of the exact body bytes.

`HttpSender.send` makes one attempt. Every name is resolved by `CheckingResolver`, which
refuses the whole name when any address it resolves to is loopback, link-local, private
or reserved (unless the reaction sets ``allowPrivateNetworks``), and hands aiohttp exactly
the addresses it checked: the connection goes to a checked address, so a second lookup
that answers otherwise (DNS rebinding) never happens. An IP literal is checked as it is.
Redirects are followed (at most `MAX_REDIRECTS`) only on the same host and port
(tentacle.protocol.delivery_rules.redirect_allowed); any other is the answer. Environment
proxies are not used. The answer's status decides (`http_verdict`): delivered, retried
(with its ``Retry-After``), or final.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from server_shim.store.delivery_rows import Attempt, AttemptStatus, Due
from tentacle import __version__
from tentacle.net.failures import NETWORK_ERRORS, reason
from tentacle.protocol.delivery_rules import (
    Verdict,
    address_refusal,
    http_verdict,
    redirect_allowed,
    retry_after_seconds,
)
from tentacle.protocol.process import Variable
from tentacle.protocol.reactions import MAX_REDIRECTS, HttpAction
from tentacle.protocol.templates import (
    header_escape,
    json_escape,
    render,
    render_json,
    url_escape,
    values_for,
)
from tentacle.protocol.wire import encode

ANSWER_SHOWN: Final = 4096  # bytes of the receiver's answer kept in the attempt's log
_STATUS_OF: Final[dict[Verdict, AttemptStatus]] = {
    "delivered": "succeeded",
    "retry": "retrying",
    "final": "failed",
}


class AddressRefused(OSError):
    """A name or address the reaction may not reach (not retried: the rule will not change)."""


@dataclass(frozen=True)
class Request:
    """One request, ready to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


def build(due: Due, http: HttpAction, variables: list[Variable]) -> Request:
    """The request for this delivery: templates filled, our headers added, the body signed."""
    values = values_for(due.payload, variables, reaction=due.reaction, delivery_id=due.delivery_id)
    headers = {name: header_escape(render(value, values)) for name, value in http.headers.items()}
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    body: bytes | None
    if http.body is None:
        body = None if http.method in ("GET", "DELETE") else encode(due.payload)
        content_type = content_type or ("application/json" if body is not None else None)
    elif isinstance(http.body, str):
        text = http.body
        is_json = "json" in content_type.lower() if content_type else text.lstrip()[:1] in ("{", "[")
        body = render(text, values, json_escape if is_json else None).encode()
        content_type = content_type or ("application/json" if is_json else "text/plain; charset=utf-8")
    else:
        body = encode(render_json(http.body, values))
        content_type = content_type or "application/json"
    if content_type is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = content_type
    headers.setdefault("User-Agent", f"tentacle-server/{__version__}")
    headers["X-Tentacle-Event"] = due.payload.kind
    headers["X-Tentacle-Delivery"] = due.delivery_id
    if due.secret is not None:
        headers["X-Tentacle-Signature"] = "sha256=" + signature(due.secret, body or b"")
    return Request(http.method, render(http.url, values, url_escape), headers, body)


def signature(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` under ``secret``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


Lookup = Callable[[str, int, socket.AddressFamily], Awaitable[list[ResolveResult]]]


class CheckingResolver(ThreadedResolver):
    """Resolves a name and refuses it unless every address it has may be reached.

    ``lookup`` is the system's resolver (getaddrinfo) unless a test gives another.
    """

    def __init__(self, allow_private: bool, lookup: Lookup | None = None) -> None:
        super().__init__()
        self.allow_private = allow_private
        self.lookup = lookup or super().resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The checked addresses of ``host`` (all of them pass, or `AddressRefused`)."""
        found = await self.lookup(host, port, family)
        for result in found:
            refused = address_refusal(result["host"], self.allow_private)
            if refused is not None:
                raise AddressRefused(f"{host.rstrip('.')} resolves to {refused}")
        return found


class HttpSender:
    """Sends reactions' requests; one connection pool per setting of ``allowPrivateNetworks``."""

    def __init__(self, lookup: Lookup | None = None) -> None:
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self.lookup = lookup

    def _session(self, allow_private: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(allow_private)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                resolver=CheckingResolver(allow_private, self.lookup),
                use_dns_cache=False,
                limit=200,
                limit_per_host=20,
            )
            session = self._sessions[allow_private] = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False
            )
        return session

    async def send(self, due: Due, http: HttpAction, variables: list[Variable]) -> Attempt:
        """One attempt of the delivery; what it gave (never raises for the network's failures)."""
        started, clock = time.time(), time.monotonic()
        try:
            request = build(due, http, variables)
        except (ValueError, UnicodeError) as exc:
            return Attempt("failed", started, time.monotonic() - clock, error=f"request: {exc}")
        try:
            return await self._send(request, http, started, clock)
        except AddressRefused as exc:
            return Attempt("failed", started, time.monotonic() - clock, error=f"refused: {exc}")
        except aiohttp.ClientConnectorDNSError as exc:
            cause = exc.os_error
            status: AttemptStatus = "failed" if isinstance(cause, AddressRefused) else "retrying"
            return Attempt(status, started, time.monotonic() - clock, error=str(cause or exc))
        except aiohttp.InvalidURL as exc:
            return Attempt("failed", started, time.monotonic() - clock, error=f"url: invalid: {exc}")
        except NETWORK_ERRORS as exc:
            unwrapped = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
            return Attempt("retrying", started, time.monotonic() - clock, error=reason(unwrapped))
        except (ValueError, UnicodeError) as exc:  # what the filled-in URL or headers cannot carry
            return Attempt("failed", started, time.monotonic() - clock, error=f"request: {exc}")

    async def _send(self, request: Request, http: HttpAction, started: float, clock: float) -> Attempt:
        url, method, body = request.url, request.method, request.body
        timeout = aiohttp.ClientTimeout(total=http.timeout_seconds)
        session = self._session(http.allow_private_networks)
        for _ in range(MAX_REDIRECTS + 1):
            _check_literal(url, http.allow_private_networks)
            async with session.request(
                method, url, headers=request.headers, data=body, allow_redirects=False, timeout=timeout
            ) as answer:
                location = answer.headers.get("Location")
                note = None
                if answer.status in (301, 302, 303, 307, 308) and location:
                    target = urljoin(url, location)
                    if redirect_allowed(url, target):
                        method, body = ("GET", None) if answer.status == 303 else (method, body)
                        url = target
                        continue
                    note = f"HTTP {answer.status}: redirect to another host not followed ({target})"
                return await _result(answer, started, clock, note)
        return Attempt(
            "failed", started, time.monotonic() - clock, error=f"more than {MAX_REDIRECTS} redirects"
        )

    async def close(self) -> None:
        """Close every connection."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def _check_literal(url: str, allow_private: bool) -> None:
    """An IP literal in the URL does not go through the resolver: check it here."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    refused = address_refusal(host, allow_private)
    if refused is not None:
        raise AddressRefused(refused)


async def _result(answer: aiohttp.ClientResponse, started: float, clock: float, note: str | None) -> Attempt:
    shown = await answer.content.read(ANSWER_SHOWN)
    verdict = http_verdict(answer.status)
    error = None
    if verdict != "delivered":
        error = note or f"HTTP {answer.status} {answer.reason or ''}".strip()
    retry_after = retry_after_seconds(answer.headers.get("Retry-After"), time.time())
    return Attempt(
        _STATUS_OF[verdict],
        started,
        time.monotonic() - clock,
        response_code=answer.status,
        error=error,
        log=shown.decode("utf-8", "replace"),
        retry_after=retry_after if verdict == "retry" else None,
    )
