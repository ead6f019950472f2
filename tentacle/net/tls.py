"""TLS contexts for both ends, and thumbprint pinning.

Every connection is mutual TLS 1.2+ with ECDSA certificates. Chains are checked
against the server's CA, and on top of that each side pins the exact peer:

- the server side of a connection reads the peer's thumbprint after the handshake
  (`peer_thumbprint`) and decides in its handler, so the refusal can name it;
- the client side pins with `PinnedThumbprints`, checked by aiohttp's connector
  right after the handshake and before a single byte of the request is sent.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from tentacle.protocol.identity import thumbprint

_SHA256_PLACEHOLDER = bytes(32)
# TLS 1.2 suites: forward secrecy (ECDHE) and authenticated encryption (AEAD) only; the
# defaults also offer CBC with HMAC. TLS 1.3 suites are all AEAD and are not affected.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _base(purpose: ssl.Purpose) -> ssl.SSLContext:
    """TLS 1.2+, AEAD suites, and no trust at all yet: not the system's CAs either.

    Between server and tentacles only the server's CA counts (and pins on top of it);
    the system's store would add some 140 roots, and about a megabyte to every context.
    """
    server_side = purpose is ssl.Purpose.CLIENT_AUTH
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    return ctx


def server_context(cert: Path, key: Path, client_ca: Path | None, *, require: bool) -> ssl.SSLContext:
    """A server context asking for client certificates signed by `client_ca`."""
    ctx = _base(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
    return ctx


def client_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None, *, system_roots: bool = False
) -> ssl.SSLContext:
    """A client context trusting `ca` (no host names: peers are pinned by thumbprint).

    `system_roots` also trusts the system's CAs: for mirrors, which may be a CDN or any
    NuGet server (what they serve is verified against the plan's SHA-512 anyway).
    """
    ctx = _base(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    if system_roots:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.verify_mode = ssl.CERT_NONE  # registration: trust comes from the pinned thumbprint
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def peer_thumbprint(transport: Any) -> str | None:
    """The thumbprint of the certificate the peer presented, or None."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return thumbprint(der) if der else None


def socket_thumbprint(sock: object) -> str | None:
    """The thumbprint of the certificate a blocking TLS socket's peer presented, or None."""
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    return thumbprint(der) if der else None


class PinnedThumbprints(aiohttp.Fingerprint):
    """aiohttp pinning for one or more SHA-256 thumbprints (hex)."""

    def __init__(self, thumbprints: Iterable[str]) -> None:
        self.allowed = frozenset(t.lower() for t in thumbprints)
        first = next(iter(sorted(self.allowed)), None)
        super().__init__(bytes.fromhex(first) if first else _SHA256_PLACEHOLDER)

    def check(self, transport: Any) -> None:
        """Raise ServerFingerprintMismatch naming both thumbprints when not pinned."""
        if not transport.get_extra_info("sslcontext"):
            return
        presented = peer_thumbprint(transport) or ""
        if presented not in self.allowed:
            host, port, *_ = transport.get_extra_info("peername")
            raise aiohttp.ServerFingerprintMismatch(
                ",".join(sorted(self.allowed)).encode(), presented.encode(), host, port
            )


def pinned_connector(thumbprints: Iterable[str], **kwargs: Any) -> aiohttp.TCPConnector:
    """A connector that refuses any peer whose thumbprint is not pinned.

    Requests made through it pass their SSLContext (with the client certificate) as
    ``ssl=``; the connector's own ``ssl`` holds the pins (aiohttp checks both).
    """
    return aiohttp.TCPConnector(ssl=PinnedThumbprints(thumbprints), **kwargs)
