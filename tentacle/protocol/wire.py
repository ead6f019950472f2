"""Typed wire messages: every body that crosses a socket is a `Wire` struct.

One library, msgspec, reads and writes them: structs are typed, their fields are
camelCase on the wire (``release_version`` travels as ``releaseVersion``), unknown
fields are refused, and decoding checks types and bounds as it parses, in C. A body
that does not fit its type raises `WireError`, whose message starts with the path of
what is wrong, as a person would write it::

    steps[1].roles: expected a list of length >= 1
    releaseVersion: required
    steps[0].colour: unknown field

Pure: no I/O. Both programs decode with `decode` and encode with `encode`.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from tentacle.errors import InvalidInput

T = TypeVar("T")

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")
_QUOTED = re.compile(r"`([^`]*)`")
_TYPES = {
    "array": "a list",
    "object": "an object",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "null": "null",
}


class Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    """Base of every wire message: immutable, keyword-built, camelCase, strict.

    Subclasses say ``frozen=True`` again (``class Ping(Wire, frozen=True)``): msgspec
    inherits it anyway, but mypy checks each class's own declaration.
    """


class WireError(InvalidInput):
    """A body that does not fit its type; ``details["path"]`` says where (``steps[1].roles``)."""

    CODE = "invalid"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def describe(error: msgspec.DecodeError) -> tuple[str, str]:
    """(path, problem) of a msgspec error, in the words of this project's messages."""
    match = _AT.match(str(error))
    what = match.group("what") if match else str(error)
    path = (match.group("path") if match else None) or ""
    path = path.removeprefix(".")
    if unknown := _UNKNOWN.match(what):
        return _join(path, unknown.group("name")), "unknown field"
    if missing := _MISSING.match(what):
        return _join(path, missing.group("name")), "required"
    what = _QUOTED.sub(_type_words, what)
    if what[:2].isupper():  # "JSON is malformed" keeps its acronym
        return path, what
    return path, what[:1].lower() + what[1:]


def _type_words(quoted: re.Match[str]) -> str:
    """msgspec's `int` or `object | null` in words; anything else as it was."""
    names = quoted.group(1).split(" | ")
    if not all(name in _TYPES for name in names):
        return quoted.group(0)
    return " or ".join(_TYPES[name] for name in names)


def decode(data: bytes | str, kind: type[T], *, what: str = "body") -> T:
    """Parse and check `data` as `kind`; `WireError` names the path of the first problem."""
    try:
        return msgspec.json.decode(data, type=kind)
    except RecursionError as exc:  # msgspec's own guard against deep nesting
        raise WireError(f"{what}: nested too deep") from exc
    except msgspec.DecodeError as exc:
        path, problem = describe(exc)
        message = f"{path}: {problem}" if path else f"{what}: {problem}"
        raise WireError(message, details={"path": path} if path else {}) from exc


def convert(value: Any, kind: type[T], *, what: str = "body") -> T:
    """As `decode`, for a value already parsed from JSON (a dict of a larger message)."""
    try:
        return msgspec.convert(value, type=kind)
    except RecursionError as exc:
        raise WireError(f"{what}: nested too deep") from exc
    except msgspec.ValidationError as exc:
        path, problem = describe(exc)
        message = f"{path}: {problem}" if path else f"{what}: {problem}"
        raise WireError(message, details={"path": path} if path else {}) from exc


def encode(message: Any) -> bytes:
    """The JSON bytes of a struct (or of plain JSON values)."""
    return msgspec.json.encode(message)


def to_builtins(message: Any) -> Any:
    """A struct as plain JSON values (dicts with camelCase keys)."""
    return msgspec.to_builtins(message)
