"""A tiny sd_notify(3) client: readiness, status, watchdog and stopping for systemd.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a datagram socket that
takes newline-separated ``KEY=VALUE`` fields. A path starting with ``@`` names a socket
in the abstract namespace (the ``@`` stands for a leading NUL byte). Outside systemd the
variable is unset and every call here is a cheap no-op that returns ``False``.

Sends never block (``MSG_DONTWAIT``) and never raise: a service must not stall or die
because its supervisor is slow or gone. The first failure is logged; later ones are not,
so a broken socket cannot flood the journal every watchdog tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from tentacle.common.logs import event

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog_interval",
    "watchdog_loop",
]

logger = logging.getLogger(__name__)

_failure_logged = False


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields to systemd; return whether the message was sent."""
    address = _socket_address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    payload = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, socket.MSG_DONTWAIT, address)
    except OSError as exc:
        _log_failure_once(exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Tell systemd the service finished starting (and optionally what it is doing)."""
    fields = ["READY=1"]
    if status_text is not None:
        fields.append(_status_field(status_text))
    return notify(*fields)


def status(text: str) -> bool:
    """Set the one-line status that ``systemctl status`` shows."""
    return notify(_status_field(text))


def stopping() -> bool:
    """Tell systemd the service is shutting down (it shows "deactivating")."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """Tell systemd a reload (SIGHUP) started; send :func:`ready` when it is done."""
    # systemd matches a reload to its start by this CLOCK_MONOTONIC timestamp.
    monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")


def watchdog_interval() -> float | None:
    """Seconds between keep-alive pings, or None when no watchdog applies to us.

    That is half of ``$WATCHDOG_USEC`` (systemd's advice: ping at half the timeout),
    and only when ``$WATCHDOG_PID`` is unset or names this process.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


async def watchdog_loop() -> None:
    """Send ``WATCHDOG=1`` every :func:`watchdog_interval` seconds, forever.

    Returns at once when no watchdog is configured. Run it as a task on the daemon's
    event loop: if the loop stalls, the pings stop and systemd restarts the service.
    """
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _socket_address(value: str) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into a ``sendto`` address, or None when unusable."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        # e.g. vsock: addresses (systemd 253+), which this client does not speak.
        _log_failure_once(ValueError(f"unsupported NOTIFY_SOCKET {value!r}"))
    return None


def _status_field(text: str) -> str:
    """A STATUS field; a newline would start a new field, so it becomes a space."""
    return "STATUS=" + " ".join(text.splitlines())


def _log_failure_once(exc: Exception) -> None:
    """Log the first notification failure of this process, and only that one."""
    global _failure_logged  # one flag per process: log the first failure only
    if not _failure_logged:
        _failure_logged = True
        event(logger, "sdnotify.failed", logging.WARNING, error=exc)
