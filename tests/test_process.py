"""The process document: parsing with defaults, the error's format, the JSON round trip, and
properties over any input (each validation rule with its path: tests/test_process_rules.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle.errors import TentacleError
from tentacle.protocol.process import PackageUse, Process, ProcessError, Script, Step, Variable, parse_process
from tests.process_helpers import example, mutated, problems_of


def test_example_parses_with_defaults() -> None:
    """The design's example parses into dataclasses, with defaults filled in."""
    process = parse_process(example())
    assert process.name == "OctoPetShop"
    assert process.steps[0] == Step(
        name="Open VPN",
        phase="preAcquisition",
        roles=("web",),
        script=Script("bash", "vpn-up.sh"),
    )
    assert process.steps[1].phase == "deployment"
    assert process.steps[1].timeout_seconds == 3600
    assert process.steps[2].timeout_seconds == 600
    assert process.steps[2].package == PackageUse("OctoPetShop.Db", "mirrors", "pull")
    assert process.runbooks["Restart"].steps[0].package == PackageUse("OctoPetShop.Tools", "builtin", "push")
    assert process.variables[0] == Variable(
        name="DbPassword", value="s3cret", environments=("Production",), sensitive=True
    )
    assert process.variables[1].value == ""
    assert not process.variables[1].sensitive


def test_to_json_round_trips_with_camel_case() -> None:
    """to_json gives a camelCase document that parses back to an equal Process."""
    process = parse_process(example())
    doc = process.to_json()
    assert doc["steps"][2]["timeoutSeconds"] == 600
    assert "timeout_seconds" not in json.dumps(doc)
    assert parse_process(json.loads(json.dumps(doc))) == process


def test_package_ids_cover_steps_and_runbooks() -> None:
    """package_ids lists the packages of process steps and runbook steps."""
    assert parse_process(example()).package_ids() == {
        "OctoPetShop.Web",
        "OctoPetShop.Db",
        "OctoPetShop.Tools",
    }


def test_name_comes_from_caller_when_absent() -> None:
    """A document without a name takes the project name given by the caller (the URL)."""
    doc = mutated(lambda d: d.pop("name"))
    assert parse_process(doc, "FromUrl").name == "FromUrl"


def test_steps_and_runbooks_and_variables_are_optional() -> None:
    """A process of only a name is valid and has no steps."""
    process = parse_process({"name": "Empty"})
    assert process == Process("Empty", ())
    assert process.package_ids() == set()


def test_null_is_absent_only_where_a_field_may_be_null() -> None:
    """A step's script or package may be null (none); null for a field with a default is refused."""
    doc = mutated(lambda d: d["steps"][1].update(package=None))
    assert parse_process(doc).steps[1].package is None
    refused = mutated(lambda d: d["steps"][1].update(timeoutSeconds=None))
    assert problems_of(refused) == [("steps[1].timeoutSeconds", "expected an integer, got null")]


def test_error_lists_every_broken_rule_in_the_documented_format() -> None:
    """Every broken rule is reported at once, joined as 'path: message; path: message'."""

    def change(doc: dict[str, Any]) -> None:
        doc["steps"][0]["package"] = {"id": "A"}
        doc["steps"][2]["name"] = "Open VPN"

    with pytest.raises(ProcessError) as caught:
        parse_process(mutated(change))
    assert str(caught.value) == (
        "steps[0].package: not allowed in a preAcquisition step; "
        "steps[2].name: duplicate step name (see steps[0])"
    )
    assert caught.value.details["path"] == "steps[0].package"
    assert caught.value.details["problems"][1] == {
        "path": "steps[2].name",
        "message": "duplicate step name (see steps[0])",
    }


def test_a_problem_of_shape_is_reported_first_and_alone() -> None:
    """msgspec stops at the first problem of shape; the rules are checked only on a well-formed document."""

    def change(doc: dict[str, Any]) -> None:
        doc["steps"][1]["roles"] = []
        doc["steps"][2]["name"] = "Open VPN"

    with pytest.raises(ProcessError) as caught:
        parse_process(mutated(change))
    assert str(caught.value) == "steps[1].roles: expected a list of length >= 1"
    assert caught.value.details == {
        "path": "steps[1].roles",
        "problems": [{"path": "steps[1].roles", "message": "expected a list of length >= 1"}],
    }


def test_error_is_a_tentacle_error_and_a_value_error() -> None:
    """ProcessError fits both the project's hierarchy and ValueError."""
    with pytest.raises(ProcessError) as caught:
        parse_process([])
    assert isinstance(caught.value, TentacleError)
    assert isinstance(caught.value, ValueError)


def test_long_problem_lists_are_shortened_in_the_message_only() -> None:
    """Past 20 problems the message summarizes; the problems list keeps them all."""
    step = {"name": "Same", "roles": ["r"], "script": {"syntax": "sh", "body": "x"}}
    with pytest.raises(ProcessError) as caught:
        parse_process({"name": "P", "steps": [step] * 31})
    assert len(caught.value.problems) == 30
    assert str(caught.value).endswith("and 10 more problems")


def test_sensitive_value_is_not_in_repr() -> None:
    """A variable's repr leaves its value out, so logging it cannot leak a secret."""
    process = parse_process(example())
    assert "s3cret" not in repr(process)


# --- property tests -----------------------------------------------------------------

FIELD_NAMES = [
    "name", "steps", "runbooks", "variables", "phase", "roles", "script", "package",
    "timeoutSeconds", "syntax", "body", "id", "feed", "acquisition", "value",
    "environments", "machines", "sensitive", "Restart",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["bash", "python3", "preAcquisition", "push", "pull", "web", "builtin"]),
)
KEYS = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=4))
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=6)),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(JSON_LIKE)
def test_arbitrary_values_raise_only_process_error(doc: object) -> None:
    """parse_process never raises anything but ProcessError, whatever it is given."""
    try:
        process = parse_process(doc)
    except ProcessError:
        return
    assert parse_process(process.to_json()) == process


NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
SCRIPTS = st.builds(Script, st.sampled_from(["bash", "sh", "python3"]), NAMES)
PACKAGES = st.builds(
    PackageUse,
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    NAMES,
    st.sampled_from(["push", "pull"]),
)
STEPS = st.builds(
    Step,
    name=NAMES,
    phase=st.just("deployment"),
    roles=st.lists(NAMES, min_size=1, max_size=3).map(tuple),
    script=SCRIPTS,
    package=st.none() | PACKAGES,
    timeout_seconds=st.integers(1, 86400),
)
VARIABLES = st.builds(
    Variable,
    name=NAMES,
    value=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10),
    environments=st.lists(NAMES, max_size=2).map(tuple),
    roles=st.lists(NAMES, max_size=2).map(tuple),
    machines=st.lists(NAMES, max_size=2).map(tuple),
    sensitive=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    NAMES,
    st.lists(STEPS, max_size=5, unique_by=lambda step: step.name),
    st.lists(VARIABLES, max_size=5),
)
def test_valid_processes_round_trip(name: str, steps: list[Step], variables: list[Variable]) -> None:
    """Any valid Process survives to_json, JSON text and parse_process unchanged."""
    process = Process(name, tuple(steps), variables=tuple(variables))
    assert parse_process(json.loads(json.dumps(process.to_json()))) == process
