"""Hostile inputs for tests: fixed cases and hypothesis strategies.

Bodies are bytes, built here rather than by the HTTP client, so that they can hold what
a well-behaved client never sends: lone surrogates (JSON ``\\ud800`` escapes), invalid
UTF-8, nesting far past any limit, numbers no parser should turn into an int. Path
segments come percent-encoded, for the same reason.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import quote

from hypothesis import strategies as st

LONE = "\ud800"
HUGE_TEXT: Final = "x" * (1024 * 1024)  # passes the 2 MiB body limit: the handlers must refuse it
_DEEP = re.compile(r'"\\u0000DEEP(\d+)\\u0000"')

# Characters of every category, lone surrogates included (hypothesis leaves them out by default).
ANY_CHAR = st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
TEXT = st.text(ANY_CHAR, max_size=24)
WORDS = ["Default", "Shop", "web-01", "Dev", "1.0.0", "bash", "preAcquisition", "push", "pull", "polling"]
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**80),
    st.integers(max_value=-(2**63)),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT, st.sampled_from(WORDS))


def deep(levels: int) -> str:
    """A marker that `encode` turns into `levels` nested arrays (too deep for json.dumps)."""
    return f"\x00DEEP{levels}\x00"


def encode(value: Any) -> bytes:
    """JSON bytes, lone surrogates escaped, NaN and Infinity allowed, `deep` markers expanded."""
    text = json.dumps(value, ensure_ascii=True, allow_nan=True)
    return _DEEP.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text).encode()


def json_documents(keys: list[str]) -> st.SearchStrategy[Any]:
    """Nested JSON values whose object keys are mostly the given field names."""
    names = st.one_of(st.sampled_from(keys), TEXT)
    return st.recursive(
        SCALARS,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=6),
        max_leaves=25,
    )


PLAN_KEYS = [
    *("taskId", "kind", "projectName", "releaseVersion", "environmentName", "machineName", "steps"),
    *("variables", "index", "name", "phase", "script", "package", "timeoutSeconds", "syntax", "body"),
    *("id", "version", "sha512", "size", "fileName", "feed", "acquisition", "mirrors", "value", "sensitive"),
]
PROCESS_KEYS = [
    *("name", "steps", "runbooks", "variables", "phase", "roles", "script", "package", "syntax", "body"),
    *("id", "feed", "acquisition", "timeoutSeconds", "value", "environments", "machines", "sensitive"),
]
API_KEYS = [
    *("name", "projectName", "releaseVersion", "environmentNames", "machineNames", "runbookName"),
    *("packageVersions", "steps", "token", "csr", "mode", "endpoint", "roles", "environments", "force"),
    "port",
]
JSON_VALUES = json_documents(API_KEYS + PROCESS_KEYS)
JSON_TEXTS = st.one_of(TEXT, JSON_VALUES.map(lambda v: encode(v).decode()))


# --- fixed bodies, each a category of its own ----------------------------------------------------

_WRONG_TYPES: Final[dict[str, Any]] = dict(
    zip(API_KEYS, [1, [], {}, "Dev", 7, 1.5, [1], None, True] * 2, strict=False)  # one wrong type per field
)
FIXED_BODIES: Final[dict[str, bytes]] = {
    "empty": b"",
    "null": b"null",
    "array": b"[]",
    "string": b'"x"',
    "number": b"12345678901234567890123",
    "int-of-5000-digits": b'{"name": ' + b"9" * 5000 + b"}",
    "nan": b'{"name": NaN, "projectName": Infinity, "releaseVersion": -Infinity}',
    "deep-arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep-objects": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "lone-surrogates": encode(dict.fromkeys(API_KEYS, LONE) | {LONE: LONE}),
    "surrogate-lists": encode({key: [LONE, "\udfff"] for key in API_KEYS}),
    "invalid-utf8": b'{"name": "\xff\xfe", "projectName": "\xc0\xaf"}',
    "utf8-surrogate-bytes": b'{"name": "\xed\xa0\x80", "projectName": "\xed\xbf\xbf"}',
    "truncated-utf8": b'{"name": "\xe2\x82',
    "bom": b"\xef\xbb\xbf{}",
    "nul-in-strings": encode(dict.fromkeys(API_KEYS, "a\x00b")),
    "duplicate-keys": b'{"name": "a", "name": 2, "projectName": "Shop", "projectName": []}',
    "wrong-types": encode(_WRONG_TYPES),
    "huge-fields": encode(dict.fromkeys(API_KEYS, HUGE_TEXT[: 100 * 1024])),
    "over-the-limit": encode({"name": "x" * (3 * 1024 * 1024)}),
    "junk": b"\x00\x01\x02 not json at all \xff",
}


# --- variants of one valid body --------------------------------------------------------------

WRONG_VALUES: Final[list[Any]] = [
    *(None, True, 0, -1, 2**64, -(2**64), 1.5, float("inf"), float("nan"), "", "x", [], {}, ["x"], {"x": 1}),
    *(LONE, [LONE], {LONE: "x"}, HUGE_TEXT, [HUGE_TEXT[:300_000]] * 3, deep(60), deep(70), deep(5000)),
]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place inside a JSON value (object keys and list indexes), outermost first."""
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


def replaced(value: Any, where: tuple[Any, ...], new: Any) -> Any:
    """A deep copy of `value` with the node at `where` replaced by `new`."""
    copied = copy.deepcopy(value)
    parent = copied
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = new
    return copied


def removed(value: Any, where: tuple[Any, ...]) -> Any:
    """A deep copy of `value` without the node at `where`."""
    copied = copy.deepcopy(value)
    parent = copied
    for key in where[:-1]:
        parent = parent[key]
    del parent[where[-1]]
    return copied


def field_variants(valid: dict[str, Any]) -> Iterator[bytes]:
    """The valid body with each field in turn missing, or replaced by each wrong value."""
    for where in paths(valid):
        yield encode(removed(valid, where))
        for wrong in WRONG_VALUES:
            yield encode(replaced(valid, where, wrong))
    yield encode({**valid, "unexpected": 1, LONE: LONE})


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """A valid body with one to three random changes somewhere inside it."""
    body: Any = valid
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths(body))
        if not places:
            break
        where = draw(st.sampled_from(places))
        choice = draw(st.sampled_from(["replace", "remove", "wrong"]))
        if choice == "remove":
            body = removed(body, where)
        else:
            new = draw(SCALARS | JSON_VALUES) if choice == "replace" else draw(st.sampled_from(WRONG_VALUES))
            body = replaced(body, where, new)
    return body


@st.composite
def broken_utf8(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """A valid body with invalid UTF-8 bytes inside one of its strings."""
    raw = encode(valid)
    quotes = [m.end() for m in re.finditer(b'"', raw)]
    at = draw(st.sampled_from(quotes))
    bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80\x80"]))
    return raw[:at] + bad + raw[at:]


def bodies(valid: dict[str, Any] | None) -> st.SearchStrategy[bytes]:
    """Random JSON, random bytes, and (for a route with a valid body) mutations of it."""
    options = [
        JSON_VALUES.map(encode),
        st.binary(max_size=64),
        st.sampled_from(sorted(FIXED_BODIES.values())),
    ]
    if valid is not None:
        options += [mutated(valid).map(encode), broken_utf8(valid)]
    return st.one_of(options)


# --- path segments and queries ---------------------------------------------------------------


def segment(text: str) -> str:
    """A path segment holding `text`, percent-encoded (lone surrogates as their UTF-8-like bytes)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


ODD_SEGMENTS: Final[list[str]] = [
    *("%ED%A0%80", "%FF", "%C0%AF", "%E2%82", "..", ".", "%2E%2E", "%2F", "a%2Fb", "a%00b", "%25"),
    *("%F0%9F%90%99", "Default%20", "%20", "CON", "-", "a" * 201, "x" * 3000, "%5C..%5C", "null"),
]


def segments(known: list[str]) -> st.SearchStrategy[str]:
    """Values that name something real, odd ones, random text and random bytes."""
    odd = st.one_of(
        st.sampled_from(ODD_SEGMENTS),
        TEXT.filter(bool).map(segment),
        st.binary(min_size=1, max_size=12).map(lambda raw: quote(raw, safe="")),
    )
    real = st.sampled_from(known)
    return st.one_of(real, real, real, odd)  # mostly a real name, so that the handler goes deeper


_QUERY_VALUES = st.one_of(
    st.sampled_from(["-1", "0", "99999999999999999999", "9" * 5000, "1e3", "0x10", " 1", "\u0661", "NaN"]),
    st.sampled_from(["9223372036854775807", "9223372036854775808", "-9223372036854775809"]),
    st.integers().map(str),
    TEXT,
).map(segment)
_SINCE = _QUERY_VALUES.map(lambda value: f"?since={value}")
QUERIES = st.one_of(
    st.just(""),
    _SINCE,
    _SINCE,
    st.builds(lambda key, value: f"?{key}={value}", st.sampled_from(["wait", "x", "%FF"]), _QUERY_VALUES),
)
ODD_QUERIES: Final[list[str]] = [
    *(
        "?since=-1",
        "?since=99999999999999999999",
        "?since=-99999999999999999999",
        "?since=9223372036854775808",
    ),
    *("?since=" + "9" * 5000, "?since=", "?since=abc", "?since=%FF", "?since=%ED%A0%80", "?since=1e3"),
    *("?since=1&since=2", "?since=%00", "?wait=-1", "?%FF=%FF", "?" + "a=1&" * 500),
]


# --- parser inputs ---------------------------------------------------------------------------

NESTED_TEXTS: Final = ["[" * 100_000, '{"a":' * 100_000, '[{"kind":' * 50_000]
VERSION_TEXTS = st.one_of(
    TEXT,
    st.text(alphabet="0123456789.-+*, \t[]()aAzZ^_\u0660\u00a0", max_size=40),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(1, 6000).map(lambda n: "1.0.0-" + "a" * n),
    st.integers(1, 6000).map(lambda n: "[1.0," + "9" * n + "]"),
)


@st.composite
def message_shaped(draw: st.DrawFn) -> str | bytes:
    """Objects that look like messages, with any field wrong, as text or UTF-8 bytes."""
    fields = {
        "kind": st.sampled_from(["request", "response", "Request", ""]) | SCALARS,
        "id": TEXT | SCALARS,
        "method": st.sampled_from(["ping", "task.start"]) | TEXT,
        "params": JSON_VALUES,
        "result": JSON_VALUES,
        "error": JSON_VALUES | st.fixed_dictionaries({"code": TEXT, "message": TEXT}),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
    text = encode({name: draw(fields[name]) for name in chosen}).decode()
    return text.encode() if draw(st.booleans()) else text
