"""JSON calls to the server: every client of the project (registration, the operator's CLI).

Every client in the project (registration, the operator's API client) sends JSON
and expects JSON; a non-2xx answer carries the error body of design.md and becomes
`RemoteError` with the server's message; network failures become ours in
`tentacle.net.failures` (a pinned thumbprint mismatch is a `TrustError` naming both).
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from tentacle.errors import RemoteError
from tentacle.net.failures import NETWORK_ERRORS, translate


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> Any:
    """Send one JSON request and return the decoded JSON answer."""
    try:
        async with session.request(
            method,
            url,
            json=body,
            headers=headers,
            ssl=ssl_context if ssl_context else True,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            text = await response.text()
            return _decode(response.status, text, url)
    except NETWORK_ERRORS as exc:
        raise translate(exc, url) from exc


def _decode(status: int, text: str, url: str) -> Any:
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if 200 <= status < 300:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        raise RemoteError(
            error["message"],
            code=str(error.get("code", "error")),
            status=status,
            details=error.get("details") if isinstance(error.get("details"), dict) else None,
        )
    raise RemoteError(f"{url}: HTTP {status}: {text[:200]}", status=status)
