"""Reaching a NuGet mirror: one blocking GET at a time, with short timeouts and clear reasons.

How it works. `MirrorClient` holds what every request to a mirror needs: the TLS context
(with our client certificate), the certificate pins of the server's own feed, and the
`Timeouts`. A `MirrorRequest` is one GET, redirects followed, each hop on its own
`PinnedConnection`: a connection gets ``connect`` seconds (TLS included), and each read
may wait its read timeout for a byte, so a dead or crawling mirror costs seconds, not
minutes. `cancel` from any thread makes a blocked read return at once. A failure is a
`MirrorFailure` whose reason an operator can read (`http_reason` gives the gist of an
error page).

Why blocking HTTP in threads: a package body is the hot path (a 1 GiB file must arrive at
least as fast as curl writes it). A blocking TLS socket decrypts straight into the cache
writer's page-aligned buffers (`PartialWriter`), whose own threads hash and write them
(O_DIRECT) in parallel: no event-loop hops per chunk, no copies, and the event loop stays
free. Every request, probes included, goes through this one small HTTP/1.1 layer
(`http.client`), so there is one set of timeouts and error reasons.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from tentacle.errors import TrustError
from tentacle.net.pinned import PinnedConnection

__all__ = [
    "MirrorClient",
    "MirrorFailure",
    "MirrorRequest",
    "Timeouts",
    "http_reason",
    "network_failure",
    "transient_status",
]

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# nginx (and most servers) title an error page "400 No required SSL certificate was sent".
_ERROR_PAGE_TITLE = re.compile(rb"<title>([^<]{1,200})</title>", re.IGNORECASE)


class MirrorFailure(Exception):
    """One mirror failed one attempt (internal: collected into AcquisitionError)."""

    def __init__(self, reason: str, *, again: bool = False, transient: bool = False) -> None:
        """`again`: trying the same mirror once more may work at once (a cut after progress);
        `transient`: the mirror may work later (unreachable, cut, busy: HTTP 5xx or 429),
        unlike one that refused us or served other bytes."""
        super().__init__(reason)
        self.reason = reason
        self.again = again
        self.transient = transient or again


def transient_status(status: int) -> bool:
    """Whether an HTTP status says "not now" rather than "no" (5xx, 408, 429)."""
    return status >= 500 or status in (408, 429)


def network_failure(reason: str, exc: BaseException, *, again: bool = False) -> MirrorFailure:
    """The failure for a network error: transient, unless the peer was not the one pinned or trusted."""
    return MirrorFailure(reason, again=again, transient=not isinstance(exc, TrustError))


@dataclass(frozen=True)
class Timeouts:
    """Seconds a mirror may take: to connect (TLS included), between two reads, to a probe's answer."""

    connect: float = 3.0
    stall: float = 10.0
    probe: float = 5.0


@dataclass(frozen=True)
class MirrorClient:
    """How to reach mirrors: the TLS context (with our client certificate) and the timeouts.

    ``pins`` maps a ``host:port`` to the certificate thumbprints accepted there: the server's
    own feed is pinned like every other call to the server (the CA alone would also accept
    any tentacle's certificate); other mirrors are checked against the CA.
    """

    ssl_context: ssl.SSLContext
    timeouts: Timeouts = Timeouts()
    pins: Mapping[str, frozenset[str]] = field(default_factory=dict)


def http_reason(status: int, body: bytes) -> str:
    """'HTTP 400 (No required SSL certificate was sent)': the status and an error page's gist."""
    match = _ERROR_PAGE_TITLE.search(body)
    detail = match.group(1).decode(errors="replace").strip() if match else ""
    detail = detail.removeprefix(str(status)).strip()
    return f"HTTP {status} ({detail})" if detail else f"HTTP {status}"


class MirrorRequest:
    """One GET (redirects followed), each hop on its own `PinnedConnection`; `cancel` from any thread."""

    def __init__(self, client: MirrorClient, read_timeout: float) -> None:
        """A request whose reads may each wait `read_timeout` seconds for a byte."""
        self.client = client
        self.read_timeout = read_timeout
        self.cancelled = False
        self._conn: PinnedConnection | None = None

    @property
    def sock(self) -> socket.socket | None:
        """The current connection's socket (for reading a body straight into buffers)."""
        return self._conn.sock if self._conn is not None else None

    def open(self, url: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        """The response to GET `url` (after at most MAX_REDIRECTS redirects)."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self._get(url, headers)
            location = response.getheader("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            self.close()
            url = urljoin(url, location)
        raise MirrorFailure(f"more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        """Connect (TLS and pin included) within the connect timeout, send the GET, read the head."""
        parts = urlsplit(url)
        try:
            self._conn = PinnedConnection(
                url,
                self.client.ssl_context,
                connect_timeout=self.client.timeouts.connect,
                io_timeout=self.read_timeout,
                pins=self.client.pins.get(parts.netloc.lower()),
            )
        except ValueError as exc:
            raise MirrorFailure(str(exc)) from exc
        if self.cancelled:
            raise MirrorFailure("cancelled")
        conn = self._conn.open()
        target = parts.path or "/"
        target += f"?{parts.query}" if parts.query else ""
        all_headers = {"Accept-Encoding": "identity", "User-Agent": "tentacle", **headers}
        # No "Connection: close": http.client would then close its socket right after the
        # headers, and the body could not be read from the socket directly (`_Body`).
        conn.request("GET", target, headers=all_headers)
        return conn.getresponse()

    def describe(self, exc: BaseException) -> str:
        """A short reason for this request's failure, as an operator would want to read it."""
        if self._conn is None:
            return str(exc)
        return self._conn.describe(exc)

    def cancel(self) -> None:
        """Stop the request: a read blocked in another thread returns at once."""
        self.cancelled = True
        if self._conn is not None:
            self._conn.abort()

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
