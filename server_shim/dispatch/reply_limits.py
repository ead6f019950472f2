"""What the server reads from a tentacle, and how much and how slowly it lets it come.

Every read from an agent is bounded: an answer to a call is at most `reply_limit(method)`
bytes (a ping's a few KiB, a task.status's the message limit), and a body, once its
first byte is in, must keep coming at `MIN_RATE` bytes per second after a `GRACE` of
seconds (`ProgressRule`). An agent that breaks either is `Misbehaved`: not retryable,
so the call fails, the target fails in its task with the reason, the connection is
closed, and one log line names the machine (``agent.reply_too_large machine=...``,
``agent.reply_too_slow``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final, Self

import aiohttp

from tentacle.common.logs import event
from tentacle.errors import RemoteError
from tentacle.protocol.messages import MAX_MESSAGE_BYTES, Method

log = logging.getLogger("server_shim.dispatch.reply_limits")
SMALL_REPLY: Final = 64 * 1024  # ping, start, gate, cancel, finish: a few hundred bytes each
MIN_RATE: Final = 64 * 1024  # bytes per second a body must keep up once started
GRACE: Final = 5.0  # seconds before the rate counts: a short body is never slow
_LIMITS: Final[dict[str, int]] = {Method.TASK_STATUS: MAX_MESSAGE_BYTES}


def reply_limit(method: Method | str) -> int:
    """The most bytes an answer to ``method`` may take."""
    return _LIMITS.get(method, SMALL_REPLY)  # a StrEnum member and its text are the same key


class Misbehaved(RemoteError):
    """An agent broke a limit of the protocol; not retryable (it would do it again)."""

    CODE = "agent-misbehaved"
    EVENT = "agent.misbehaved"

    def __init__(self, message: str, *, machine: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=self.CODE, status=502, details={"machine": machine, **(details or {})})
        self.retryable = False
        self.machine = machine

    def report(self) -> Self:
        """Log the one line that names the machine; returns self, to be raised."""
        event(log, self.EVENT, logging.WARNING, machine=self.machine, reason=self.message)
        return self


class ReplyTooLarge(Misbehaved):
    """An answer over its size limit."""

    CODE = "reply-too-large"
    EVENT = "agent.reply_too_large"


class ReplyTooSlow(Misbehaved):
    """An answer whose body came slower than `MIN_RATE` after `GRACE`."""

    CODE = "reply-too-slow"
    EVENT = "agent.reply_too_slow"


def too_large(machine: str, method: str, size: int | str, limit: int) -> ReplyTooLarge:
    """The error (logged) for an answer of ``size`` bytes (or "more than N") over ``limit``."""
    return ReplyTooLarge(
        f"{machine} answered {method} with {size} bytes, over the limit of {limit}: connection closed",
        machine=machine,
        details={"method": method, "limit": limit},
    ).report()


def too_slow(machine: str, method: str, received: int, seconds: float) -> ReplyTooSlow:
    """The error (logged) for an answer dribbled at less than `MIN_RATE`."""
    return ReplyTooSlow(
        f"{machine} answered {method} too slowly ({received} bytes in {seconds:.1f} s,"
        f" less than {MIN_RATE} bytes/s after {GRACE:g} s): connection closed",
        machine=machine,
        details={"method": method},
    ).report()


@dataclass
class ProgressRule:
    """A body in progress must have ``rate`` bytes per second for every second past ``grace``."""

    rate: float = MIN_RATE
    grace: float = GRACE
    started: float = field(default_factory=time.monotonic)
    received: int = 0

    def add(self, count: int) -> None:
        """``count`` more bytes arrived."""
        self.received += count

    def deadline(self) -> float:
        """When (monotonic) the next byte must have come by."""
        return self.started + self.grace + self.received / self.rate

    def behind(self, now: float | None = None) -> bool:
        """Whether the body is slower than the rule allows."""
        return (time.monotonic() if now is None else now) > self.deadline()

    def elapsed(self) -> float:
        """Seconds since the body started."""
        return time.monotonic() - self.started


async def read_capped(stream: aiohttp.StreamReader, limit: int, rule: ProgressRule) -> bytes | None:
    """A whole body of at most ``limit`` bytes, or None when it is bigger (read no further).

    Raises `TimeoutError` when the body falls behind ``rule``.
    """
    chunks: list[bytes] = []
    while True:
        try:
            async with asyncio.timeout(max(0.0, rule.deadline() - time.monotonic())):
                chunk = await stream.readany()
        except TimeoutError:
            raise TimeoutError(f"{rule.received} bytes in {rule.elapsed():.1f} s") from None
        if not chunk:
            return b"".join(chunks)
        rule.add(len(chunk))
        if rule.received > limit:
            return None
        chunks.append(chunk)
