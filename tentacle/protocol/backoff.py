"""Reconnect schedule: jittered exponential backoff, reset after a success.

Delays grow 1, 2, 4 ... up to 60 seconds; each is jittered into [d/2, d] so that a
thousand agents that lost the same server do not come back in lock-step.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The delay before the next attempt; call `reset` after a successful connection."""

    base: float = 1.0
    cap: float = 60.0
    rand: Callable[[], float] = field(default=random.random, repr=False)
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay for this attempt (and count it)."""
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return max(self.base, ceiling * (0.5 + 0.5 * self.rand()))

    def reset(self) -> None:
        """Forget failures: the next delay is the base again."""
        self.attempt = 0
