"""Masking of sensitive values in script output, and variable names as shell names.

How it works: every sensitive value goes into one compiled regex alternation, longest
first. Python's ``re`` takes the first alternative that matches at the leftmost position,
so at any position the longest secret wins: ``s3cret-s3cret`` is masked whole instead of
as two masks, and a secret that contains another is never left half visible. Output is
masked line by line, so a multi-line value also contributes each of its lines as a value
of its own: a private key printed with ``echo "$KEY"`` arrives one line at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"

_NOT_SHELL = re.compile(r"[^A-Za-z0-9_]")


class Masker:
    """Replaces every occurrence of each sensitive value in a text with `MASK`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        """Compile the alternation once; empty values are ignored."""
        values = {value for secret in secrets for value in _values(secret)}
        # Longest first so that a secret containing another one wins; then sorted so that
        # the pattern does not depend on the order the secrets came in.
        ordered = sorted(values, key=lambda value: (-len(value), value))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def mask(self, text: str) -> str:
        """The text with every sensitive value replaced by `MASK`."""
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)


def _values(secret: str) -> list[str]:
    """The value itself and, for a multi-line value, each of its non-blank lines."""
    if not secret:
        return []
    lines = [line.strip() for line in secret.splitlines()]
    return [secret, *(line for line in lines if line and len(lines) > 1)]


def shell_name(name: str) -> str:
    """A variable name as an environment-variable name a shell can expand.

    Characters other than ASCII letters, digits and ``_`` become ``_``; a leading digit
    (or an empty name) gets a ``_`` prefix.
    """
    result = _NOT_SHELL.sub("_", name)
    if not result or result[0].isdigit():
        result = "_" + result
    return result
