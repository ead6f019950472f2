"""Reading typed fields out of decoded JSON, collecting every problem with its path.

The process document and the plan are both checked by a `FieldReader`: each read
either returns the value or records ``(path, message)`` and returns ``None``, so one
pass finds every problem (``steps[1].roles: must be a non-empty list``) instead of
stopping at the first. `DocumentError` carries the list; its message joins them.

Types are strict, as JSON has them: a bool is not an integer, a string is not a list,
and ``null`` stands for an absent optional field.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

from tentacle.protocol.documents import NAME_MAX, DocumentError, key_path, text_problem

#: Sentinel default: the field must be present.
REQUIRED: Final = object()


def index_path(path: str, index: int) -> str:
    """The path of item ``index`` of the list at ``path`` (``steps[1]``)."""
    return f"{path}[{index}]"


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

    def texts(
        self,
        obj: Mapping[str, object],
        key: str,
        path: str,
        *,
        non_empty: bool = False,
        max_items: int = 1000,
    ) -> tuple[str, ...] | None:
        """A list of non-empty names; absent means empty unless ``non_empty``."""
        items = self.items(obj, key, path, max_items=max_items, non_empty=non_empty)
        if items is None:
            return None
        values = [self.check_text(value, item_path) for item_path, value in items]
        if any(value is None for value in values):
            return None
        return tuple(value for value in values if value is not None)

    def items(
        self,
        obj: Mapping[str, object],
        key: str,
        path: str,
        *,
        max_items: int,
        non_empty: bool = False,
    ) -> list[tuple[str, object]] | None:
        """The ``(path, value)`` items of a list field, bounded in length."""
        field_path = key_path(path, key)
        value = self._get(obj, key, path, REQUIRED if non_empty else [])
        if value is REQUIRED:
            return None
        if not isinstance(value, list | tuple) or (non_empty and not value):
            self.problem(field_path, "must be a non-empty list" if non_empty else "must be a list")
            return None
        if len(value) > max_items:
            self.problem(field_path, f"must have at most {max_items} items")
            return None
        return [(index_path(field_path, i), item) for i, item in enumerate(value)]

    def integer(
        self,
        obj: Mapping[str, object],
        key: str,
        path: str,
        *,
        low: int,
        high: int,
        default: object = REQUIRED,
    ) -> int | None:
        """An integer field within ``low..high`` (a bool is not an integer)."""
        value = self._get(obj, key, path, default)
        if value is REQUIRED:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.problem(key_path(path, key), f"must be an integer from {low} to {high}")
            return None
        return value

    def flag(
        self, obj: Mapping[str, object], key: str, path: str, *, default: object = REQUIRED
    ) -> bool | None:
        """A boolean field."""
        value = self._get(obj, key, path, default)
        if value is REQUIRED:
            return None
        if not isinstance(value, bool):
            self.problem(key_path(path, key), "must be true or false")
            return None
        return value
