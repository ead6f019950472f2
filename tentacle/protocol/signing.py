"""Signed requests: the server signs what makes a tentacle act, and the tentacle checks it.

Mutual TLS says *who is connected*; a signature says *the server meant this*. A TLS
session key stolen from memory, or a proxy that terminates TLS in between, can speak on a
connection but cannot sign: only the server's Ed25519 signing key (apart from its TLS
key, kept in its home) can. The tentacle pins the signing key's public half at
registration and refuses any request of `SIGNED_METHODS` that is unsigned, altered, too
old, meant for another machine, or signed by another key.

What is signed (`signed_bytes`) is a JSON header, a newline, then the request's params
exactly as they travel (``msgspec.Raw``: the bytes are checked, not a re-encoding)::

    ["tentacle-rpc-signature/1", <method>, <machine name>, <key id>, <signed at>]\\n<params>

The machine's name binds a message to its target (a start signed for web-01 is refused
by web-02); the time bounds a replay to `MAX_AGE` seconds either side of the tentacle's
clock (a repeated task.start within that window finds its task already known). The
signature travels in the request envelope's ``signature`` field; a request without one
encodes exactly as before, so an older tentacle still reads it.

A public key travels and is stored as ``ed25519:<base64 of its 32 bytes>``; its key id
is the first 16 hex digits of a SHA-256 over those bytes. Pure: no I/O. ``cryptography``
is imported only to sign or verify: an idle tentacle never loads its 8 MB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import TYPE_CHECKING, Annotated, Final

import msgspec

from tentacle.errors import TrustError
from tentacle.protocol.wire import Wire

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM: Final = "ed25519"
DOMAIN: Final = "tentacle-rpc-signature/1"
MAX_AGE: Final = 3600.0  # seconds a signature is good for, either side of the signer's clock
KEY_ID_PATTERN: Final = r"^[0-9a-f]{16}$"
PUBLIC_PATTERN: Final = r"^ed25519:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"  # base64 of 32 bytes

KeyId = Annotated[str, msgspec.Meta(pattern=KEY_ID_PATTERN)]
PublicKeyText = Annotated[str, msgspec.Meta(pattern=PUBLIC_PATTERN)]
_PUBLIC = re.compile(PUBLIC_PATTERN)
_HEADER = msgspec.json.Encoder()


class Signature(Wire, frozen=True):
    """A request's signature: by which key, when, and the 64 signature bytes (base64)."""

    key_id: KeyId
    signed_at: Annotated[float, msgspec.Meta(ge=0)]
    value: Annotated[str, msgspec.Meta(min_length=88, max_length=88)]


class BadSignature(TrustError):
    """A request that is unsigned, altered, stale, for another machine, or signed by an unknown key."""

    CODE = "bad-signature"


def public_raw(text: str) -> bytes:
    """The 32 bytes of ``ed25519:<base64>``; ValueError saying what is wrong."""
    if not _PUBLIC.match(text):
        raise ValueError(f"a signing key must be 'ed25519:' and the base64 of 32 bytes, not {text[:60]!r}")
    return base64.b64decode(text.removeprefix(f"{ALGORITHM}:"))


def key_id(text: str) -> str:
    """The short name of the signing key ``ed25519:<base64>``."""
    return hashlib.sha256(b"tentacle signing key\0" + public_raw(text)).hexdigest()[:16]


def public_text(public: Ed25519PublicKey) -> str:
    """``ed25519:<base64>``: how a public key travels and is stored."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{ALGORITHM}:{base64.b64encode(raw).decode()}"


def signed_bytes(method: str, machine: str, signer: str, signed_at: float, params: bytes) -> bytes:
    """The exact bytes a signature covers."""
    return _HEADER.encode([DOMAIN, method, machine, signer, signed_at]) + b"\n" + params


def sign(
    method: str, machine: str, params: bytes, key: Ed25519PrivateKey, now: float, signer: str | None = None
) -> Signature:
    """The signature of a request of ``method`` with these params, for ``machine``.

    ``signer`` is the key's id when the caller knows it (it saves working it out each time).
    """
    signer = signer or key_id(public_text(key.public_key()))
    value = key.sign(signed_bytes(method, machine, signer, now, params))
    return Signature(key_id=signer, signed_at=now, value=base64.b64encode(value).decode())


def verify(
    method: str, machine: str, params: bytes, signature: Signature | None, pinned: str, now: float
) -> None:
    """Raise `BadSignature` naming why, unless key ``pinned`` signed exactly this for ``machine`` lately."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    expected = key_id(pinned)
    if signature is None:
        raise BadSignature(
            f"{method}: unsigned, and this tentacle accepts only requests signed by key {expected}"
        )
    if signature.key_id != expected:
        raise BadSignature(f"{method}: signed by key {signature.key_id}, not by the pinned key {expected}")
    try:
        value = base64.b64decode(signature.value, validate=True)
        public = Ed25519PublicKey.from_public_bytes(public_raw(pinned))
        public.verify(value, signed_bytes(method, machine, signature.key_id, signature.signed_at, params))
    except (binascii.Error, InvalidSignature) as exc:
        raise BadSignature(
            f"{method}: the signature does not match the request (altered, or signed for another machine)"
        ) from exc
    skew = now - signature.signed_at
    if abs(skew) > MAX_AGE:
        raise BadSignature(
            f"{method}: signed {abs(skew):.0f} s {'ago' if skew > 0 else 'ahead of this clock'}, beyond"
            f" {MAX_AGE:.0f} s (a replay, or the two clocks disagree)"
        )
