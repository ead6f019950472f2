"""Pure parts of the channel: reconnect schedule, message envelopes, typed configuration."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle.common import configfile
from tentacle.errors import ConfigError
from tentacle.protocol import messages
from tentacle.protocol.backoff import Backoff
from tentacle.protocol.messages import MAX_MESSAGE_BYTES, MessageError, Method, Request, Response


def test_backoff_doubles_from_one_second_up_to_sixty() -> None:
    """Without jitter the delays are 1, 2, 4 ... capped at 60."""
    backoff = Backoff(rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_jitter_stays_within_half_to_full_delay() -> None:
    """With the lowest jitter every delay is half the ceiling, never below the 1 s base."""
    backoff = Backoff(rand=lambda: 0.0)
    assert [backoff.next_delay() for _ in range(8)] == [1, 1, 2, 4, 8, 16, 30, 30]


def test_backoff_resets_after_success() -> None:
    """After `reset` the next delay is the base again."""
    backoff = Backoff(rand=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1


@given(st.floats(min_value=0, max_value=1), st.integers(min_value=0, max_value=200))
def test_backoff_is_always_between_one_and_sixty(jitter: float, attempts: int) -> None:
    """Whatever the attempt count and jitter, delays stay in [1, 60]."""
    backoff = Backoff(rand=lambda: jitter, attempt=attempts)
    assert 1 <= backoff.next_delay() <= 60


def test_messages_round_trip() -> None:
    """Requests and responses decode to what was encoded, kind and method included."""
    request = Request.of("r1", Method.TASK_START, {"plan": {"x": 1}})
    assert messages.decode(messages.encode(request)) == request
    assert messages.encode(request) == (
        b'{"kind":"request","id":"r1","method":"task.start","params":{"plan":{"x":1}}}'
    )
    ok, failed = Response.success("r1", {"a": 1}), Response.failure("r2", "bad", "no")
    assert messages.decode(messages.encode(ok)) == ok
    assert messages.decode(messages.encode(failed)) == failed
    assert messages.encode(failed) == b'{"kind":"response","id":"r2","error":{"code":"bad","message":"no"}}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "message: JSON is malformed: invalid character (byte 4)"),
        ("[]", "message: expected an object, got a list"),
        ('{"kind": "other"}', "kind: invalid value 'other'"),
        ('{"kind": "request", "id": "", "method": "ping"}', "id: expected a string of length >= 1"),
        ('{"kind": "request", "id": 7, "method": "ping"}', "id: expected a string, got an integer"),
        ('{"kind": "request", "id": "1", "method": "pong"}', "method: invalid enum value 'pong'"),
        ('{"kind": "request", "id": "1", "method": "ping", "colour": 1}', "colour: unknown field"),
        ('{"kind": "request", "method": "ping"}', "id: required"),
        ('{"kind": "response", "id": "1", "error": "x"}', "error: expected an object or null, got a string"),
        ('{"kind": "response", "id": "1", "error": {"code": "x"}}', "error.message: required"),
        ('{"kind": "response", "id": "1"}', "message: a response has exactly one of result and error"),
        ('{"kind": "request", "id": "1", "params": ' + "[" * 100_000, "message: nested too deep"),
    ],
)
def test_bad_messages_are_refused_naming_the_path(text: str, message: str) -> None:
    """Malformed envelopes raise MessageError (a 400) whose message starts with the path."""
    with pytest.raises(MessageError) as caught:
        messages.decode(text)
    assert caught.value.message == message
    assert caught.value.http_status == 400


def test_an_oversize_message_is_refused_before_it_is_parsed() -> None:
    """A message over MAX_MESSAGE_BYTES is refused by its length alone."""
    text = '{"kind":"request","id":"1","method":"ping","params":{"pad":"' + "x" * MAX_MESSAGE_BYTES + '"}}'
    with pytest.raises(MessageError, match="over the limit of 16777216"):
        messages.decode(text)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (
            '{"kind": "request", "id": "r9", "method": "pong"}',
            Response.failure("r9", "unknown-method", "method: invalid enum value 'pong'"),
        ),
        (
            '{"kind": "request", "id": "r9", "method": "ping", "params": 5, "x": 1}',
            Response.failure("r9", "bad-message", "x: unknown field"),
        ),
        ('{"kind": "request", "id": 9, "method": "pong"}', None),
        ('{"kind": "response", "id": "r9", "result": {}, "x": 1}', None),
        ("nope", None),
    ],
)
def test_a_refused_request_that_names_its_id_is_answered(text: str, answer: Response | None) -> None:
    """The peer of a refused request hears why at once when its id can be read, and nothing otherwise."""
    with pytest.raises(MessageError) as caught:
        messages.decode(text)
    assert messages.refusal(text, caught.value) == answer


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_decode_raises_only_message_error(value: object) -> None:
    """Any JSON value decodes to a message or raises MessageError, nothing else."""
    with contextlib.suppress(MessageError):
        messages.decode(json.dumps(value))


@dataclass(frozen=True)
class _Inner:
    port: int = 1
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Outer:
    name: str = ""
    ratio: float = 0.5
    inner: _Inner = field(default_factory=_Inner)


def test_config_environment_overrides_the_file() -> None:
    """PREFIX_SECTION_KEY beats the file value, parsed to the field's type."""
    loaded = configfile.load(_Outer, {"inner": {"port": 5}}, {"X_INNER_PORT": "7", "X_NAME": "a b"}, "X")
    assert loaded == _Outer(name="a b", inner=_Inner(port=7))


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        ({"inner": {"port": "5"}}, {}, "inner.port: must be an integer"),
        ({"inner": {"port": True}}, {}, "inner.port: must be an integer"),
        ({"inner": {"hosts": "a"}}, {}, "inner.hosts: must be a list"),
        ({"inner": {"hosts": [1]}}, {}, r"inner.hosts\[0\]: must be a string"),
        ({"innr": {}}, {}, "innr: unknown key"),
        ({}, {"X_INNER_PORT": "many"}, r"inner.port \(\$X_INNER_PORT\)"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], env: dict[str, str], message: str) -> None:
    """Every configuration error names the key (and the variable when it came from one)."""
    with pytest.raises(ConfigError, match=message):
        configfile.load(_Outer, data, env, "X")


def test_config_dump_reads_back() -> None:
    """`dump` writes TOML that `load` reads back to the same configuration."""
    import tomllib

    config = _Outer(name='quote " and \\ backslash', ratio=2.0, inner=_Inner(port=9, hosts=("a", "b")))
    assert configfile.load(_Outer, tomllib.loads(configfile.dump(config)), {}, "X") == config


def test_a_missing_table_or_key_takes_the_fields_own_default() -> None:
    """`[polling]` left out, or given without its port, keeps 10943: the field's default, not the class's."""
    from server_shim.server_config import ServerConfig

    base = {"public_url": "https://deploy.example:8443"}
    for polling in ({}, {"polling": {"host": "127.0.0.1"}}):
        loaded = configfile.load(ServerConfig, {**base, **polling}, {}, "SERVER_SHIM")
        assert (loaded.listen.port, loaded.polling.port) == (8443, 10943)


def test_a_shared_tables_check_names_the_table() -> None:
    """A check written once for [listen] and [polling] says which one failed."""
    from server_shim.server_config import ServerConfig

    with pytest.raises(ConfigError, match=r"^polling\.port: must be 0-65535"):
        configfile.load(ServerConfig, {"polling": {"port": 70000}}, {}, "SERVER_SHIM")
