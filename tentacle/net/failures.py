"""The one place where third-party network errors become ours.

aiohttp, ssl, http.client and the socket layer each raise their own exceptions;
callers catch `NETWORK_ERRORS` and raise ``translate(exc, where) from exc``, or wrap
the call in ``with network(where):``. What comes out is one of tentacle.errors:

    ServerFingerprintMismatch, a refused certificate   -> TrustError (never retried)
    a refused websocket handshake                      -> RemoteError with its status
    anything else of the network                       -> TransportError (retryable)

`reason` gives the short text an operator reads in a log or an error ("connection
refused", "timed out", "certificate refused: ..."), the same for every caller.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
from collections.abc import Iterator

import aiohttp

from tentacle.errors import RemoteError, TentacleError, TransportError, TrustError

NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    OSError,  # ssl.SSLError and ConnectionError are OSErrors
    TimeoutError,
    EOFError,
    http.client.HTTPException,
)
# What a pinned connection may fail with: the network's errors, or a peer that is not pinned.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (*NETWORK_ERRORS, TrustError)


_TRUST_FAILURES = (
    aiohttp.ServerFingerprintMismatch,
    aiohttp.ClientConnectorCertificateError,
    ssl.SSLCertVerificationError,
)


def mismatch_text(exc: aiohttp.ServerFingerprintMismatch) -> str:
    """'expected X, presented Y' for a refusal message."""
    return f"expected thumbprint {exc.expected.decode()}, presented {exc.got.decode()}"


def reason(exc: BaseException) -> str:
    """A short reason for a network failure, as an operator would want to read it."""
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return f"not the pinned peer: {mismatch_text(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"certificate refused: {exc.certificate_error}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"refused the connection: {exc.status} {exc.message}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, http.client.HTTPException | ConnectionError | EOFError):
        return "connection closed"
    return str(exc) or type(exc).__name__


def translate(exc: BaseException, where: str) -> TentacleError:
    """The error of ours that stands for `exc`; `where` (a URL, a peer) starts its message."""
    message = f"{where}: {reason(exc)}"
    if isinstance(exc, _TRUST_FAILURES):
        return TrustError(message)
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return RemoteError(message, code="handshake-refused", status=exc.status)
    return TransportError(message)


@contextlib.contextmanager
def network(where: str) -> Iterator[None]:
    """Run the body, turning network errors into ours."""
    try:
        yield
    except NETWORK_ERRORS as exc:
        raise translate(exc, where) from exc
