"""Masking of sensitive values in script output, and variable names as shell names.

How it works: every sensitive value goes into one compiled regex alternation, longest
first. Python's ``re`` takes the first alternative that matches at the leftmost position,
so at any position the longest secret wins: ``s3cret-s3cret`` is masked whole instead of
as two masks, and a secret that contains another is never left half visible.

Output is masked line by line, and a shell strips what surrounds a value (``echo $X``
drops leading and trailing blanks; ``$(cat file)`` drops a trailing newline). So besides
the value itself, each value contributes its stripped form, and a value with line breaks
each of its non-blank lines, stripped: a private key printed with ``echo "$KEY"`` arrives
one line at a time, and ``"s3cret\n"`` prints as ``s3cret``. A value that is nothing but
blanks is masked as it is (it would otherwise mask nothing at all).
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


def _values(secret: str) -> set[str]:
    """The value, its stripped form, and each of its non-blank lines (stripped)."""
    if not secret:
        return set()
    lines = (line.strip() for line in secret.splitlines())
    return {secret, *(piece for piece in (secret.strip(), *lines) if piece)}


def shell_name(name: str) -> str:
    """A variable name as an environment-variable name a shell can expand.

    Characters other than ASCII letters, digits and ``_`` become ``_``; a leading digit
    (or an empty name) gets a ``_`` prefix.
    """
    result = _NOT_SHELL.sub("_", name)
    if not result or result[0].isdigit():
        result = "_" + result
    return result
