"""The pure rules of signed requests (tentacle.protocol.signing): what verifies, what is refused, and why."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tentacle.protocol import signing
from tentacle.protocol.messages import Request, decode, encode
from tentacle.protocol.signing import MAX_AGE, BadSignature

NOW = 1_800_000_000.0
PARAMS = b'{"taskId":"T-1","gateIndex":0,"gateName":"preAcquisition"}'


def _key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, signing.public_text(key.public_key())


def test_a_signature_verifies_for_its_method_machine_params_and_key() -> None:
    """What the server signed for web-01 verifies on web-01 with the pinned key."""
    key, public = _key()
    signature = signing.sign("task.gate", "web-01", PARAMS, key, NOW)
    signing.verify("task.gate", "web-01", PARAMS, signature, public, NOW + 5)
    assert signature.key_id == signing.key_id(public)


@pytest.mark.parametrize(
    ("method", "machine", "params", "now", "reason"),
    [
        ("task.start", "web-01", PARAMS, NOW, "does not match"),  # another method
        ("task.gate", "web-02", PARAMS, NOW, "does not match"),  # another machine
        ("task.gate", "web-01", PARAMS.replace(b"0", b"1"), NOW, "does not match"),  # altered params
        ("task.gate", "web-01", PARAMS + b" ", NOW, "does not match"),  # any byte counts
        ("task.gate", "web-01", PARAMS, NOW + MAX_AGE + 1, "ago"),  # replayed later
        ("task.gate", "web-01", PARAMS, NOW - MAX_AGE - 1, "ahead"),  # from a clock far ahead
    ],
)
def test_anything_but_the_signed_request_is_refused_naming_why(
    method: str, machine: str, params: bytes, now: float, reason: str
) -> None:
    """Another method, machine, params byte or time than the signature covers: BadSignature."""
    key, public = _key()
    signature = signing.sign("task.gate", "web-01", PARAMS, key, NOW)
    with pytest.raises(BadSignature, match=reason):
        signing.verify(method, machine, params, signature, public, now)


def test_an_unsigned_request_or_another_key_is_refused() -> None:
    """No signature, or a valid one by a key other than the pinned one, is refused naming the key ids."""
    key, public = _key()
    _, other = _key()
    with pytest.raises(BadSignature, match="unsigned"):
        signing.verify("task.gate", "web-01", PARAMS, None, public, NOW)
    signature = signing.sign("task.gate", "web-01", PARAMS, key, NOW)
    with pytest.raises(BadSignature, match=f"not by the pinned key {signing.key_id(other)}"):
        signing.verify("task.gate", "web-01", PARAMS, signature, other, NOW)


def test_the_signature_survives_the_envelope_and_old_envelopes_are_unchanged() -> None:
    """A signed request decodes with the exact params bytes signed; an unsigned one has no signature field."""
    key, public = _key()
    unsigned = Request.of("r1", "task.gate", {"taskId": "T-1", "gateIndex": 0, "gateName": "preAcquisition"})
    assert b"signature" not in encode(unsigned)
    signed = Request(
        id="r1",
        method=unsigned.method,
        params=unsigned.params,
        signature=signing.sign("task.gate", "web-01", bytes(unsigned.params), key, NOW),
    )
    received = decode(encode(signed))
    assert isinstance(received, Request) and received.signature is not None
    signing.verify("task.gate", "web-01", bytes(received.params), received.signature, public, NOW)


def test_public_keys_are_checked_before_use() -> None:
    """Only ``ed25519:`` and the base64 of 32 bytes is a public key; its id is stable."""
    _, public = _key()
    assert len(signing.key_id(public)) == 16 and signing.key_id(public) == signing.key_id(public)
    for bad in ("", "ed25519:", "rsa:" + public[8:], public[:-2] + "==", public + "A"):
        with pytest.raises(ValueError, match="signing key"):
            signing.public_raw(bad)
