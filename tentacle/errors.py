"""One error hierarchy for the agent and the server.

Every error a user can meet says three things: the exit code of a command that ends
with it, the HTTP status of an API request that ends with it, and whether trying
again can help (``retryable``). Loops retry by ``retryable`` and nothing else; the
API turns an error into a status at one boundary (``server_shim.api.middleware``)::

    TentacleError                 exit 1   HTTP 500  (a bug when it reaches the API unclassed)
    ├── UsageError                exit 2   bad flags or arguments
    ├── ConfigError               exit 78  bad configuration file or environment
    ├── InvalidInput              HTTP 400 what the caller sent is wrong (the message names it)
    │   └── BadJson               HTTP 400 a body that is not a JSON object
    ├── Unauthorized              HTTP 401 no or unknown credentials
    ├── Forbidden                 HTTP 403 known credentials, not allowed this
    ├── NotFound                  HTTP 404 a named thing does not exist
    ├── Conflict                  HTTP 409 it exists already, or is in use
    ├── TooLarge                  HTTP 413 a body or file over its limit
    ├── TrustError                HTTP 403 a peer failed thumbprint or certificate checks
    ├── TransportError            retryable: the network or the peer went away
    ├── RemoteError               the peer answered with an error (retryable when it is 5xx)
    └── StorageError              the server's own storage failed (retryable when transient)

Modules subclass these for their own cases (``ReleaseNotFound(NotFound)``); the
API's error ``code`` is the class's ``code`` when it sets one, else its name in
kebab case (``release-not-found``). Third-party exceptions (aiohttp, ssl, OSError)
become these where they happen: network ones in `tentacle.net.failures`, with
``raise ... from exc``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar


class TentacleError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500
    retryable: bool = False

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    @property
    def code(self) -> str:
        """The API's error code: the class's own ``CODE`` if it sets one, else its kebab-case name."""
        own = type(self).__dict__.get("CODE")
        return str(own) if own else kebab(type(self).__name__)


def kebab(name: str) -> str:
    """'PackageNotFound' -> 'package-not-found'; 'Not Found' -> 'not-found'."""
    out = "".join("-" + c.lower() if c.isupper() else c for c in name.replace(" ", ""))
    return out.strip("-") or "error"


class UsageError(TentacleError):
    """The command line was wrong: a missing flag, a bad value."""

    exit_code = 2
    http_status = 400


class ConfigError(TentacleError):
    """The configuration cannot be used; the message names the key."""

    exit_code = 78


class InvalidInput(TentacleError, ValueError):
    """What the caller sent is wrong; the message (and ``details``) name the field or path."""

    http_status = 400
    CODE = "invalid"


class BadJson(InvalidInput):
    """A request body that is not a JSON object (not UTF-8, not JSON, too deep)."""

    CODE = "bad-json"


class Unauthorized(TentacleError):
    """No credentials, or credentials nobody issued; the message says which were expected."""

    http_status = 401
    CODE = "unauthorized"


class Forbidden(TentacleError):
    """Known credentials that may not do this."""

    http_status = 403
    CODE = "forbidden"


class NotFound(TentacleError):
    """The request names something that does not exist."""

    http_status = 404
    CODE = "not-found"


class Conflict(TentacleError):
    """The thing exists already, or is in use."""

    http_status = 409
    CODE = "conflict"


class TooLarge(TentacleError):
    """A body or file over its limit."""

    http_status = 413
    CODE = "too-large"


class TrustError(TentacleError):
    """A peer presented a certificate we do not trust."""

    http_status = 403


class TransportError(TentacleError):
    """The connection failed or broke; trying again later may work."""

    http_status = 503
    retryable = True


class RemoteError(TentacleError):
    """The peer answered with a structured error."""

    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int = 0,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.remote_code = code
        self.status = status
        self.retryable = status >= 500 or status == 0


class StorageError(TentacleError):
    """The server's own storage failed (database or files); ``retryable`` when it may pass."""

    http_status = 503

    def __init__(self, message: str, *, retryable: bool = False, details: dict[str, Any] | None = None):
        super().__init__(message, details=details)
        self.retryable = retryable


def exit_code_of(prog: str, command: Callable[[], int]) -> int:
    """Run a command's body; an error it ends with becomes one line on stderr and its exit code.

    The one place where both command lines (`tentacle`, `server-shim`) turn errors into
    exit codes: 1, 2 or 78 as the error says, 78 for a key or folder the user cannot read
    (a setup problem: systemd does not restart-loop on it), 130 on Ctrl-C.
    """
    try:
        return command()
    except TentacleError as exc:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except PermissionError as exc:
        print(
            f"{prog}: error: {exc.filename}: permission denied (can the service user read it?)",
            file=sys.stderr,
        )
        return 78
    except KeyboardInterrupt:
        return 130
