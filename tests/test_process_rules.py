"""The process document's rules: every bad field named with its path, and the limits on its size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tentacle.protocol.process import parse_process
from tests.process_helpers import example, mutated, problems_of

MiB = 1024 * 1024


def _step(doc: dict[str, Any], index: int = 1) -> dict[str, Any]:
    """Step ``index`` of a document."""
    step: dict[str, Any] = doc["steps"][index]
    return step


def _var(doc: dict[str, Any]) -> dict[str, Any]:
    """The first variable of a document."""
    variable: dict[str, Any] = doc["variables"][0]
    return variable


INVALID: list[tuple[str, Callable[[dict[str, Any]], object], tuple[str, str]]] = [
    ("missing name", lambda d: d.pop("name"), ("name", "required")),
    ("empty name", lambda d: d.update(name=""), ("name", "expected a string of length >= 1")),
    ("long name", lambda d: d.update(name="n" * 201), ("name", "expected a string of length <= 200")),
    ("unknown top field", lambda d: d.update(stpes=[]), ("stpes", "unknown field")),
    ("steps not a list", lambda d: d.update(steps="x"), ("steps", "expected a list, got a string")),
    ("steps a dict", lambda d: d.update(steps={}), ("steps", "expected a list, got an object")),
    (
        "step not an object",
        lambda d: d["steps"].append(7),
        ("steps[3]", "expected an object, got an integer"),
    ),
    (
        "misspelt field",
        lambda d: _step(d, 0).update(scirpt={}),
        ("steps[0].scirpt", "unknown field"),
    ),
    (
        "empty roles",
        lambda d: _step(d).update(roles=[]),
        ("steps[1].roles", "expected a list of length >= 1"),
    ),
    (
        "roles a string",
        lambda d: _step(d).update(roles="web"),
        ("steps[1].roles", "expected a list, got a string"),
    ),
    ("roles missing", lambda d: _step(d).pop("roles"), ("steps[1].roles", "required")),
    (
        "empty role",
        lambda d: _step(d).update(roles=[""]),
        ("steps[1].roles[0]", "expected a string of length >= 1"),
    ),
    (
        "role not a string",
        lambda d: _step(d).update(roles=["a", 1]),
        ("steps[1].roles[1]", "expected a string, got an integer"),
    ),
    ("step name missing", lambda d: _step(d).pop("name"), ("steps[1].name", "required")),
    (
        "step name long",
        lambda d: _step(d).update(name="s" * 201),
        ("steps[1].name", "expected a string of length <= 200"),
    ),
    (
        "bad phase",
        lambda d: _step(d).update(phase="post"),
        ("steps[1].phase", "expected deployment or preAcquisition, got 'post'"),
    ),
    (
        "neither script nor package",
        lambda d: _step(d, 0).pop("script"),
        ("steps[0]", "needs a script, a package or both"),
    ),
    (
        "package in preAcquisition",
        lambda d: _step(d, 0).update(package={"id": "A"}),
        ("steps[0].package", "not allowed in a preAcquisition step"),
    ),
    (
        "duplicate step name",
        lambda d: _step(d, 2).update(name="Open VPN"),
        ("steps[2].name", "duplicate step name (see steps[0])"),
    ),
    (
        "script not an object",
        lambda d: _step(d).update(script="ls"),
        ("steps[1].script", "expected an object or null, got a string"),
    ),
    (
        "bad syntax",
        lambda d: _step(d).update(script={"syntax": "powershell", "body": "x"}),
        ("steps[1].script.syntax", "expected bash, python3 or sh, got 'powershell'"),
    ),
    (
        "empty body",
        lambda d: _step(d).update(script={"syntax": "sh", "body": ""}),
        ("steps[1].script.body", "expected a string of length >= 1"),
    ),
    (
        "body missing",
        lambda d: _step(d).update(script={"syntax": "sh"}),
        ("steps[1].script.body", "required"),
    ),
    (
        "body over 1 MiB in UTF-8",
        lambda d: _step(d).update(script={"syntax": "sh", "body": "é" * (MiB // 2 + 1)}),
        ("steps[1].script.body", f"must be at most {MiB} bytes in UTF-8"),
    ),
    (
        "body with NUL",
        lambda d: _step(d).update(script={"syntax": "sh", "body": "a\x00b"}),
        ("steps[1].script.body", "must not contain NUL characters or unpaired surrogates"),
    ),
    (
        "unknown script field",
        lambda d: _step(d).update(script={"syntax": "sh", "body": "x", "shell": "zsh"}),
        ("steps[1].script.shell", "unknown field"),
    ),
    (
        "bad package id",
        lambda d: _step(d).update(package={"id": "../evil"}),
        ("steps[1].package.id", "must be a package id (letters, digits, '.', '_', '-')"),
    ),
    (
        "package id too long",
        lambda d: _step(d).update(package={"id": "p" * 101}),
        ("steps[1].package.id", "expected a string of length <= 100"),
    ),
    (
        "bad acquisition",
        lambda d: _step(d).update(package={"id": "A", "acquisition": "pigeon"}),
        ("steps[1].package.acquisition", "expected pull or push, got 'pigeon'"),
    ),
    (
        "empty feed",
        lambda d: _step(d).update(package={"id": "A", "feed": ""}),
        ("steps[1].package.feed", "expected a string of length >= 1"),
    ),
    (
        "unknown package field",
        lambda d: _step(d).update(package={"id": "A", "version": "1.0"}),
        ("steps[1].package.version", "unknown field"),
    ),
    (
        "timeout bool",
        lambda d: _step(d).update(timeoutSeconds=True),
        ("steps[1].timeoutSeconds", "expected an integer, got true or false"),
    ),
    (
        "timeout zero",
        lambda d: _step(d).update(timeoutSeconds=0),
        ("steps[1].timeoutSeconds", "expected an integer >= 1"),
    ),
    (
        "timeout too long",
        lambda d: _step(d).update(timeoutSeconds=86401),
        ("steps[1].timeoutSeconds", "expected an integer <= 86400"),
    ),
    (
        "timeout string",
        lambda d: _step(d).update(timeoutSeconds="60"),
        ("steps[1].timeoutSeconds", "expected an integer, got a string"),
    ),
    (
        "timeout float",
        lambda d: _step(d).update(timeoutSeconds=1.5),
        ("steps[1].timeoutSeconds", "expected an integer, got a number"),
    ),
    (
        "variables not a list",
        lambda d: d.update(variables={}),
        ("variables", "expected a list, got an object"),
    ),
    (
        "variable not an object",
        lambda d: d.update(variables=["x"]),
        ("variables[0]", "expected an object, got a string"),
    ),
    (
        "variable name empty",
        lambda d: _var(d).update(name=""),
        ("variables[0].name", "expected a string of length >= 1"),
    ),
    (
        "variable value missing",
        lambda d: _var(d).pop("value"),
        ("variables[0].value", "required"),
    ),
    (
        "variable value a number",
        lambda d: _var(d).update(value=5),
        ("variables[0].value", "expected a string, got an integer"),
    ),
    (
        "variable value with unpaired surrogate",
        lambda d: _var(d).update(value="\ud800"),
        ("variables[0].value", "must not contain NUL characters or unpaired surrogates"),
    ),
    (
        "sensitive not a bool",
        lambda d: _var(d).update(sensitive=1),
        ("variables[0].sensitive", "expected true or false, got an integer"),
    ),
    (
        "environments a string",
        lambda d: _var(d).update(environments="Production"),
        ("variables[0].environments", "expected a list, got a string"),
    ),
    (
        "empty environment",
        lambda d: _var(d).update(environments=[""]),
        ("variables[0].environments[0]", "expected a string of length >= 1"),
    ),
    (
        "machines not strings",
        lambda d: _var(d).update(machines=[None]),
        ("variables[0].machines[0]", "expected a string, got null"),
    ),
    (
        "roles a dict",
        lambda d: _var(d).update(roles={}),
        ("variables[0].roles", "expected a list, got an object"),
    ),
    (
        "unknown variable field",
        lambda d: _var(d).update(scope="x"),
        ("variables[0].scope", "unknown field"),
    ),
    (
        "runbooks a list",
        lambda d: d.update(runbooks=[]),
        ("runbooks", "expected an object, got a list"),
    ),
    (
        "runbook without steps",
        lambda d: d["runbooks"].update(Empty={}),
        ("runbooks.Empty.steps", "required"),
    ),
    (
        "runbook with no steps",
        lambda d: d["runbooks"].update(Empty={"steps": []}),
        ("runbooks.Empty.steps", "expected a list of length >= 1"),
    ),
    (
        "runbook not an object",
        lambda d: d["runbooks"].update(Bad=[]),
        ("runbooks.Bad", "expected an object, got a list"),
    ),
    (
        "runbook unknown field",
        lambda d: d["runbooks"]["Restart"].update(when="now"),
        ("runbooks.Restart.when", "unknown field"),
    ),
    (
        "runbook empty name",
        lambda d: d["runbooks"].update({"": {"steps": []}}),
        ('runbooks[""]', "expected a string of length >= 1"),
    ),
    (
        "runbook step problem",
        lambda d: d["runbooks"]["Restart"]["steps"][0].update(roles=[]),
        ("runbooks.Restart.steps[0].roles", "expected a list of length >= 1"),
    ),
    (
        "runbook step problem under an odd name",
        lambda d: d["runbooks"].update({"Re start": {"steps": [{"name": "x", "package": {"id": "A"}}]}}),
        ('runbooks["Re start"].steps[0].roles', "required"),
    ),
    (
        "runbook duplicate step names",
        lambda d: d["runbooks"]["Restart"]["steps"].append(dict(d["runbooks"]["Restart"]["steps"][0])),
        ("runbooks.Restart.steps[1].name", "duplicate step name (see runbooks.Restart.steps[0])"),
    ),
]


@pytest.mark.parametrize(
    ("change", "problem"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_documents_name_the_field(
    change: Callable[[dict[str, Any]], object], problem: tuple[str, str]
) -> None:
    """Each rule, when broken, is reported alone, at its path, with its message."""
    assert problems_of(mutated(change)) == [problem]


@pytest.mark.parametrize(
    ("doc", "given"),
    [(None, "null"), ([], "a list"), ("process", "a string"), (3, "an integer"), (True, "true or false")],
)
def test_document_must_be_an_object(doc: object, given: str) -> None:
    """A document that is not an object is rejected as such."""
    assert problems_of(doc) == [("document", f"expected an object, got {given}")]


def test_name_must_match_the_caller() -> None:
    """A document naming another project than the URL is rejected."""
    assert problems_of(example(), "Other") == [("name", "must match the project name 'Other'")]


def test_at_most_500_steps() -> None:
    """More than 500 steps are refused."""
    step = {"roles": ["r"], "script": {"syntax": "sh", "body": "x"}}
    many = [dict(step, name=f"s{i}") for i in range(501)]
    assert problems_of({"name": "P", "steps": many}) == [("steps", "expected a list of length <= 500")]
    assert len(parse_process({"name": "P", "steps": many[:500]}).steps) == 500


def test_at_most_5000_variables() -> None:
    """More than 5000 variables are refused."""
    many = [{"name": f"v{i}", "value": "x"} for i in range(5001)]
    assert problems_of({"name": "P", "variables": many}) == [
        ("variables", "expected a list of length <= 5000")
    ]
    assert len(parse_process({"name": "P", "variables": many[:5000]}).variables) == 5000


def test_script_of_exactly_1_mib_is_allowed() -> None:
    """The body limit counts UTF-8 bytes, and exactly 1 MiB passes."""
    doc = mutated(lambda d: _step(d).update(script={"syntax": "sh", "body": "x" * MiB}))
    assert len(parse_process(doc).steps[1].script.body) == MiB  # type: ignore[union-attr]


def test_non_string_keys_are_rejected() -> None:
    """An object key that is not a string is a problem, not a crash."""
    assert problems_of({1: "x", "name": "P"}) == [("document", "expected a string as a key")]
