"""Typed wire messages: strict decoding whose errors name the path of the problem."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest

from tentacle.errors import InvalidInput
from tentacle.protocol.wire import Wire, WireError, convert, decode, encode


class Step(Wire, frozen=True):
    """A sample nested message."""

    step_name: Annotated[str, msgspec.Meta(min_length=1)]
    roles: Annotated[list[str], msgspec.Meta(min_length=1)]


class Doc(Wire, frozen=True):
    """A sample message with a list of nested ones."""

    steps: list[Step]
    note: str | None = None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"steps":[{"stepName":"a","roles":["x"]},{"stepName":"b","roles":[]}]}',
            "steps[1].roles: expected a list of length >= 1",
        ),
        (b'{"steps":[{"stepName":"a","roles":["x"],"colour":1}]}', "steps[0].colour: unknown field"),
        (b'{"steps":[{"roles":["x"]}]}', "steps[0].stepName: required"),
        (b'{"steps":5}', "steps: expected a list, got an integer"),
        (b"[1", "body: expected an object, got a list"),
        (b"{", "body: input data was truncated"),
        (b"{]", "body: JSON is malformed: object keys must be strings (byte 1)"),
        (b'{"steps":[],"note":5}', "note: expected a string or null, got an integer"),
    ],
)
def test_decoding_names_the_path_of_what_is_wrong(raw: bytes, message: str) -> None:
    """Every refusal is an InvalidInput (a 400) whose message starts with the path."""
    with pytest.raises(WireError) as caught:
        decode(raw, Doc)
    assert caught.value.message == message
    assert isinstance(caught.value, InvalidInput)


def test_camel_case_on_the_wire_and_snake_case_in_python() -> None:
    """Fields are camelCase in JSON, and a round trip keeps the message."""
    doc = Doc(steps=[Step(step_name="a", roles=["web"])])
    assert encode(doc) == b'{"steps":[{"stepName":"a","roles":["web"]}],"note":null}'
    assert decode(encode(doc), Doc) == doc
    assert convert({"steps": [{"stepName": "a", "roles": ["web"]}]}, Doc) == doc


class Loose(Wire, frozen=True):
    """A message with a field of any JSON value."""

    data: Any


def test_deep_nesting_is_a_wire_error() -> None:
    """JSON nested deeper than msgspec recurses is refused like any bad body, not a RecursionError."""
    with pytest.raises(WireError, match=r"^body: nested too deep$"):
        decode(b'{"data":' + b"[" * 100_000, Loose)
