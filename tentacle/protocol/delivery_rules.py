"""The rules of an outgoing delivery: done, retried or given up; when next; which addresses.

An answer is final or retried by its status alone::

    2xx                         delivered: never sent again
    408, 429, 5xx, no answer    retried (a connection error, a timeout, a TLS failure)
    anything else               final: the receiver refused it (400, 401, 404, a 3xx not followed)

Retries back off exponentially with jitter (1 s, 2 s, 4 s ... up to an hour, each drawn
from [d/2, d] so that many failed deliveries do not return in step), or after what the
receiver's ``Retry-After`` asks, for as long as the reaction's ``retryForSeconds`` (24 h by
default) from the first attempt; an attempt that would come later is not made, and the
delivery has failed.

`address_refusal` says why an address may not be reached: anything but a global unicast
address, unless the reaction allows private networks (loopback, link-local, RFC 1918,
shared and reserved ranges); an IPv6 address that embeds an IPv4 one (mapped, 6to4,
Teredo) is judged by the one it embeds. Pure: no I/O.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

Verdict = Literal["delivered", "retry", "final"]
RETRY_AFTER_MAX: Final = 86400.0
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def http_verdict(status: int) -> Verdict:
    """What an answer with this status means for the delivery."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or 500 <= status < 600:
        return "retry"
    return "final"


@dataclass(frozen=True)
class Schedule:
    """Exponential backoff with jitter: attempt n waits about ``base * 2**(n-1)``, at most ``cap``."""

    base: float = 1.0
    cap: float = 3600.0

    def delay(self, attempt: int, rand: float) -> float:
        """The wait after failed attempt number ``attempt`` (1-based); ``rand`` in [0, 1)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 40))
        return ceiling * (0.5 + 0.5 * rand)


def next_attempt_at(
    *,
    attempt: int,
    first_at: float,
    now: float,
    retry_for: float,
    retry_after: float | None,
    rand: float,
    schedule: Schedule = Schedule(),
) -> float | None:
    """When to try again after failed attempt ``attempt``; None when that is past the window."""
    delay = retry_after if retry_after is not None else schedule.delay(attempt, rand)
    at = now + delay
    return at if at <= first_at + retry_for else None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from ``now``; None if absent or bad."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return min(max(when.timestamp() - now, 0.0), RETRY_AFTER_MAX)


def address_refusal(address: str, allow_private: bool) -> str | None:
    """Why a request may not go to ``address`` (an IP literal), or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("%eth0") is not part of it
    except ValueError:
        return f"{address!r} is not an IP address"
    inner = _embedded(ip)
    if inner is not None:
        refused = address_refusal(str(inner), allow_private)
        return None if refused is None else f"{address} embeds {refused}"
    if ip.is_unspecified or ip.is_multicast:
        return f"{address} is not a unicast address"
    if ip.is_global and not ip.is_reserved:
        return None
    if allow_private:
        return None
    kind = "loopback" if ip.is_loopback else "link-local" if ip.is_link_local else "private or reserved"
    return f"{address} is a {kind} address (the reaction may set allowPrivateNetworks)"


def _embedded(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    return ip.teredo[1] if ip.teredo is not None else None


def redirect_allowed(source: str, target: str) -> bool:
    """Whether a redirect from URL ``source`` to ``target`` stays on the same host (and port).

    The scheme may only stay or go from http to https: a redirect is never followed to
    another host, nor down from https.
    """
    a, b = urlsplit(source), urlsplit(target)
    if (a.hostname or "").lower() != (b.hostname or "").lower():
        return False
    if b.scheme not in ("http", "https") or (a.scheme == "https" and b.scheme != "https"):
        return False
    if a.scheme == b.scheme:
        return _port(a.scheme, a.port) == _port(b.scheme, b.port)
    return b.port is None or b.port == _DEFAULT_PORTS["https"]


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else _DEFAULT_PORTS.get(scheme, 0)
