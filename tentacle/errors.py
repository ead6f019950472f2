"""One error hierarchy for the agent and the server.

Every error a user can meet carries an exit code for the command line and a
``retryable`` flag that tells a loop whether trying again can help::

    TentacleError                 exit 1
    ├── UsageError                exit 2   bad flags or arguments
    ├── ConfigError               exit 78  bad configuration file or environment
    ├── TrustError                exit 1   a peer failed thumbprint or certificate checks
    ├── TransportError            exit 1   retryable: the network or the peer went away
    └── RemoteError               exit 1   the peer answered with an error body

Third-party exceptions (aiohttp, ssl, OSError) are translated into these at the
boundary where they happen, with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class TentacleError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1
    retryable = False

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class UsageError(TentacleError):
    """The command line was wrong: a missing flag, a bad value."""

    exit_code = 2


class ConfigError(TentacleError):
    """The configuration cannot be used; the message names the key."""

    exit_code = 78


class TrustError(TentacleError):
    """A peer presented a certificate we do not trust."""


class TransportError(TentacleError):
    """The connection failed or broke; trying again later may work."""

    retryable = True


class RemoteError(TentacleError):
    """The peer answered with a structured error."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int = 0,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.code = code
        self.status = status
        self.retryable = status >= 500 or status == 0
