"""What the documents of the pure core share: bounded text types, and errors that name paths.

The process, the plan and the coordinator's snapshot are msgspec structs (`Wire`):
msgspec checks their shape, types and bounds as it decodes, and stops at the first
problem. The rules it cannot say (unique names, fields that depend on each other)
are checked after decoding, all at once. Either way the error is a `DocumentError`:
a `WireError` (HTTP 400) whose ``problems`` list ``(path, message)`` pairs and whose
message joins them, path first::

    steps[1].roles: expected a list of length >= 1
    steps[2].name: duplicate step name (see steps[0]); steps[0].package: not allowed in a preAcquisition step

Text fields refuse NUL characters (no process can take them in an argument or the
environment) and unpaired surrogates (no encoder can write them): see `TEXT`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Final, TypeVar

import msgspec
import msgspec.inspect

from tentacle.protocol.wire import WireError, describe

T = TypeVar("T")

NAME_MAX: Final = 200
#: How many problems the message spells out; `DocumentError.problems` keeps them all.
MESSAGE_PROBLEMS_MAX: Final = 20
#: A pattern every text field matches: no NUL, no unpaired surrogate.
TEXT: Final = "^[^\x00\ud800-\udfff]*$"
#: NuGet ids: letters, digits, '.', '_', '-'; they also become file names, so no '/'.
#: (`\Z`, not `$`, which would let a trailing newline through.)
PACKAGE_ID: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z"
SHA512: Final = r"^[0-9a-f]{128}\Z"
#: One plain path component (the tentacle writes a file of that name): no '/', '\', '.' or '..'.
FILE_NAME: Final = "^(?!\\.\\.?\\Z)[^/\\\\\x00\ud800-\udfff]+$"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX, pattern=TEXT)]
Names = Annotated[tuple[Name, ...], msgspec.Meta(max_length=1000)]

_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_AT = re.compile(r"^(?P<what>.*) - at `key` in `\$(?P<path>[^`]*)`$", re.DOTALL)
_REGEX = "expected a string matching regex "
_UNION = re.compile(r"`(?P<types>[a-z]+(?: \| [a-z]+)+)`")  # msgspec's `object | null`
_ENUM = "invalid enum value "
_SEGMENT = re.compile(r"\.?(?P<field>[A-Za-z0-9_]+)|\[(?P<item>[0-9]+|\.\.\.)\]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NO_SURROGATES = "must not contain unpaired surrogates"
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()
# What a refused pattern means, said in words in place of the regex.
_PATTERN_WORDS: Final = {
    repr(TEXT): "must not contain NUL characters or unpaired surrogates",
    repr(PACKAGE_ID): "must be a package id (letters, digits, '.', '_', '-')",
    repr(SHA512): "must be 128 lowercase hex digits",
    repr(FILE_NAME): "must be a plain file name",
}


class DocumentError(WireError):
    """A document with problems; ``problems`` lists ``(path, message)`` pairs, in order."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        shown = [f"{path}: {message}" for path, message in self.problems[:MESSAGE_PROBLEMS_MAX]]
        hidden = len(self.problems) - len(shown)
        if hidden:
            shown.append(f"and {hidden} more problems")
        details: dict[str, Any] = {"problems": [{"path": p, "message": m} for p, m in self.problems]}
        if self.problems:
            details["path"] = self.problems[0][0]
        super().__init__("; ".join(shown), details=details)


def index_path(path: str, index: int) -> str:
    """The path of item ``index`` of the list at ``path`` (``steps[1]``)."""
    return f"{path}[{index}]"


def key_path(path: str, key: str) -> str:
    """The path of ``key`` inside the object at ``path`` (``steps[0].name``, ``runbooks["Re start"]``)."""
    if not _SIMPLE_KEY.match(key):
        escaped = key.replace("\\", "\\\\").replace('"', '\\"')
        return f'{path}["{escaped}"]'
    return f"{path}.{key}" if path else key


def problem_of(error: msgspec.ValidationError, kind: Any = None) -> tuple[str, str]:
    """``(path, message)`` of a msgspec error converting to ``kind``, in this project's words.

    "document" names the root; a refused pattern reads as what it means, and a value
    outside an enum or Literal lists the values ``kind`` allows there.
    """
    keyed = _KEY_AT.match(str(error))
    if keyed:  # a bad key of a dict: msgspec names the dict ("at `key` in `$.runbooks`"), not the key
        path, what = describe(msgspec.ValidationError(f"{keyed['what']} - at `${keyed['path']}`"))
        what = f"{what} as a key"
    else:
        path, what = describe(error)
    if what.startswith(_REGEX):
        what = _PATTERN_WORDS.get(what.removeprefix(_REGEX), what)
    if what.startswith(_ENUM) and kind is not None and (allowed := choices_at(kind, path)):
        what = f"expected {', '.join(allowed[:-1])} or {allowed[-1]}, got {what.removeprefix(_ENUM)}"
    what = _UNION.sub(lambda union: union["types"].replace(" | ", " or "), what)
    return path or "document", what


def choices_at(kind: Any, path: str) -> tuple[str, ...]:
    """The values an enum or Literal at ``path`` (``steps[1].phase``) of ``kind`` allows, if it is one."""
    node: Any = msgspec.inspect.type_info(kind)
    for step in _SEGMENT.finditer(path):
        node = _optional(node)
        if step["field"] and isinstance(node, msgspec.inspect.StructType):
            node = next((f.type for f in node.fields if f.encode_name == step["field"]), None)
        else:
            node = getattr(node, "item_type", None) or getattr(node, "value_type", None)
    node = _optional(node)
    if isinstance(node, msgspec.inspect.LiteralType):
        return tuple(str(value) for value in node.values)
    if isinstance(node, msgspec.inspect.EnumType):
        return tuple(str(member.value) for member in node.cls)
    return ()


def _optional(node: Any) -> Any:
    """The type inside ``X | None``; any other type as it is."""
    if isinstance(node, msgspec.inspect.UnionType):
        return next((t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)), node)
    return node


def convert_document(value: object, kind: type[T], error: type[DocumentError]) -> T:
    """``value`` (decoded JSON) as ``kind``; ``error`` names the path of the first problem."""
    try:
        return msgspec.convert(value, type=kind)
    except msgspec.ValidationError as exc:
        raise error([problem_of(exc, kind)]) from exc
    except UnicodeEncodeError as exc:  # msgspec encodes the keys it looks up: a lone surrogate cannot be
        raise error([_find_surrogate(value, "") or ("document", _NO_SURROGATES)]) from exc


def _find_surrogate(value: object, path: str) -> tuple[str, str] | None:
    """Where the first string (or key) in ``value`` with a lone surrogate is, or None.

    The path leaves out a key that has one: the message must be encodable itself.
    """
    items: Iterable[tuple[object, object]] = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    for key, item in items:
        if isinstance(key, str) and _SURROGATE.search(key):
            return path or "document", f"a key {_NO_SURROGATES}"
        inner = key_path(path, key) if isinstance(key, str) else f"{path}[{key}]"
        if isinstance(item, str) and _SURROGATE.search(item):
            return inner, _NO_SURROGATES
        if (found := _find_surrogate(item, inner)) is not None:
            return found
    return None


def json_values(struct: msgspec.Struct) -> dict[str, Any]:
    """A struct as the plain JSON values it travels as: dicts (camelCase keys), lists, scalars."""
    # Through JSON rather than to_builtins, which keeps tuples as tuples: callers get lists.
    values: dict[str, Any] = _DECODER.decode(_ENCODER.encode(struct))
    return values


def over_bytes(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes in UTF-8 (encodes only when it may)."""
    return len(text) * 4 > limit and len(text.encode()) > limit


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or passed to a process, or None when it can."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no unpaired surrogates)"
    return None
