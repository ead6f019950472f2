"""A hand-written reader of JSON fields, left for the one body not yet a struct.

Every document of the pure core is a msgspec struct now (see `documents`); the release
request (``releases/create/v1``) is still read with `FieldReader` until it becomes a
struct of the API too, and then this module goes. Each read either returns the value
or records ``(path, message)`` and returns ``None``, so one pass finds every problem;
``raise_if_any`` raises them as one `DocumentError`.

Types are strict, as JSON has them: a bool is not an integer, a string is not a list,
and ``null`` stands for an absent optional field.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

from tentacle.protocol.documents import NAME_MAX, DocumentError, key_path, text_problem

#: Sentinel default: the field must be present.
REQUIRED: Final = object()


class FieldReader:
    """Reads fields of decoded JSON objects, recording every problem it meets."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        """Record one problem."""
        self.problems.append((path, message))

    def raise_if_any(self, error: type[DocumentError]) -> None:
        """Raise ``error`` with every recorded problem, if there is one."""
        if self.problems:
            raise error(self.problems)

    def obj(self, value: object, path: str, allowed: Collection[str] | None) -> Mapping[str, object] | None:
        """``value`` as an object; keys outside ``allowed`` (unless None) are problems."""
        if not isinstance(value, dict):
            self.problem(path or "document", "must be an object")
            return None
        for key in value:
            if not isinstance(key, str):
                self.problem(path or "document", "keys must be strings")
            elif allowed is not None and key not in allowed:
                self.problem(key_path(path, key), "unknown field")
        return value

    def _get(self, obj: Mapping[str, object], key: str, path: str, default: object) -> object:
        """The raw value of a field, ``default`` when absent or null, or REQUIRED."""
        value = obj.get(key)
        if value is None:
            if default is REQUIRED:
                self.problem(key_path(path, key), "is required")
            return default
        return value

    def text(
        self,
        obj: Mapping[str, object],
        key: str,
        path: str,
        *,
        default: object = REQUIRED,
        max_chars: int = NAME_MAX,
        max_bytes: int | None = None,
        choices: Sequence[str] | None = None,
        allow_empty: bool = False,
    ) -> str | None:
        """A string field, bounded, non-empty unless ``allow_empty``, one of ``choices``."""
        value = self._get(obj, key, path, default)
        if value is REQUIRED:
            return None
        return self.check_text(
            value,
            key_path(path, key),
            max_chars=max_chars,
            max_bytes=max_bytes,
            choices=choices,
            allow_empty=allow_empty,
        )

    def check_text(
        self,
        value: object,
        path: str,
        *,
        max_chars: int = NAME_MAX,
        max_bytes: int | None = None,
        choices: Sequence[str] | None = None,
        allow_empty: bool = False,
    ) -> str | None:
        """``value`` when it is an acceptable string, else None with a problem recorded."""
        if choices is not None and value not in choices:
            self.problem(path, "must be one of: " + ", ".join(choices))
            return None
        if not isinstance(value, str) or (not value and not allow_empty):
            self.problem(path, "must be a string" if allow_empty else "must be a non-empty string")
            return None
        issue = text_problem(value)
        if issue is None and len(value) > max_chars:
            issue = f"must be at most {max_chars} characters"
        if issue is None and max_bytes is not None and len(value.encode()) > max_bytes:
            issue = f"must be at most {max_bytes} bytes"
        if issue is not None:
            self.problem(path, issue)
            return None
        return value
