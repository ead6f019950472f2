"""Thumbprints and names: how peers are identified, without any I/O.

A thumbprint is the lowercase hex SHA-256 of a certificate's DER bytes. Users may
paste one with colons or in upper case; `normalize_thumbprint` accepts both.
"""

from __future__ import annotations

import hashlib
import re

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def thumbprint(der: bytes) -> str:
    """The SHA-256 thumbprint of a DER-encoded certificate."""
    return hashlib.sha256(der).hexdigest()


def normalize_thumbprint(text: str) -> str:
    """Lowercase hex without separators; raises ValueError when it is not SHA-256."""
    value = text.strip().lower().replace(":", "")
    if not _HEX64.match(value):
        raise ValueError(f"not a SHA-256 thumbprint (64 hex digits): {text!r}")
    return value


def check_name(kind: str, name: str) -> str:
    """A machine, environment or role name: 1-100 of letters, digits, '.', '_', '-'."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind} {name!r}: must be 1-100 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name
