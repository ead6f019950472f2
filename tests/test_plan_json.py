"""A plan's JSON form: the round trip, plans stored in older forms, and every bad field named."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle.protocol.plan import Plan, PlanError
from tests.plan_helpers import WEB_SHA, plan_for

# --- JSON form ------------------------------------------------------------------------


def test_json_round_trip() -> None:
    """A plan survives to_json, JSON text and from_json unchanged, with camelCase keys."""
    plan = plan_for("both", ["web", "db"])
    wire = json.loads(json.dumps(plan.to_json()))
    assert {"taskId", "projectName", "releaseVersion", "environmentName", "machineName"} <= set(wire)
    assert wire["steps"][2]["package"]["fileName"] == "db.3.0.1.nupkg"
    assert wire["steps"][2]["timeoutSeconds"] == 120
    assert Plan.from_json(wire) == plan


# A plan as the server stored it before plans were msgspec structs: no nulls, every field spelled out.
STORED_PLAN = (
    """{"taskId": "T-1", "kind": "deployment", "projectName": "OctoPetShop",
 "releaseVersion": "1.0.0", "environmentName": "Production", "machineName": "web-1",
 "steps": [{"index": 0, "name": "Open VPN", "phase": "preAcquisition",
            "script": {"syntax": "bash", "body": "vpn-up.sh"}, "timeoutSeconds": 3600},
           {"index": 1, "name": "Deploy web", "phase": "deployment",
            "script": {"syntax": "bash", "body": "cat \\"$PACKAGE_DIR/readme.txt\\""},
            "package": {"id": "OctoPetShop.Web", "version": "1.2.0", "sha512": "WEB_SHA", "size": 1234,
                        "fileName": "web.1.2.0.nupkg", "feed": "builtin", "acquisition": "push",
                        "mirrors": []},
            "timeoutSeconds": 3600}],
 "variables": [{"name": "Db.Password", "value": "prod-pw", "sensitive": true}]}"""
).replace("WEB_SHA", WEB_SHA)


def test_a_plan_stored_in_the_old_form_still_loads() -> None:
    """Plans stored (server database, tentacle disk) before the structs load with the same field names."""
    plan = Plan.from_json(json.loads(STORED_PLAN))
    assert [(step.index, step.name, step.phase) for step in plan.steps] == [
        (0, "Open VPN", "preAcquisition"),
        (1, "Deploy web", "deployment"),
    ]
    assert plan.steps[0].package is None
    assert plan.steps[1].package is not None and plan.steps[1].package.file_name == "web.1.2.0.nupkg"
    assert plan.sensitive_values() == ["prod-pw"]
    assert Plan.from_json(plan.to_json()) == plan


def test_runbook_plan_may_have_no_release_version() -> None:
    """A runbook plan round-trips with an empty release version; a deployment may not."""
    wire = dict(plan_for("web-1", ["web"]).to_json(), kind="runbook", releaseVersion="")
    assert Plan.from_json(wire).release_version == ""
    with pytest.raises(PlanError, match="releaseVersion: must be a non-empty string"):
        Plan.from_json(dict(wire, kind="deployment"))


def _wire() -> dict[str, Any]:
    """A valid wire plan with two steps, the second with a package."""
    return copy.deepcopy(plan_for("both", ["web", "db"]).to_json())


def _pkg(wire: dict[str, Any]) -> dict[str, Any]:
    """The package of the wire plan's step 2."""
    package: dict[str, Any] = wire["steps"][2]["package"]
    return package


BAD_PLANS: list[tuple[str, Callable[[dict[str, Any]], object], tuple[str, str]]] = [
    ("missing taskId", lambda w: w.pop("taskId"), ("taskId", "required")),
    ("bad kind", lambda w: w.update(kind="x"), ("kind", "expected deployment or runbook, got 'x'")),
    ("unknown field", lambda w: w.update(extra=1), ("extra", "unknown field")),
    ("steps not a list", lambda w: w.update(steps={}), ("steps", "expected a list, got an object")),
    (
        "index a bool",
        lambda w: w["steps"][0].update(index=False),
        ("steps[0].index", "expected an integer, got true or false"),
    ),
    (
        "indices not increasing",
        lambda w: w["steps"][2].update(index=1),
        ("steps[2].index", "must be greater than the previous step's"),
    ),
    (
        "phase missing",
        lambda w: w["steps"][1].pop("phase"),
        ("steps[1].phase", "required"),
    ),
    (
        "bad phase",
        lambda w: w["steps"][1].update(phase="late"),
        ("steps[1].phase", "expected deployment or preAcquisition, got 'late'"),
    ),
    (
        "no script or package",
        lambda w: w["steps"][3].pop("script"),
        ("steps[3]", "needs a script, a package or both"),
    ),
    (
        "preAcquisition with package",
        lambda w: w["steps"][0].update(package=_pkg(w)),
        ("steps[0].package", "not allowed in a preAcquisition step"),
    ),
    (
        "bad sha512",
        lambda w: _pkg(w).update(sha512="A" * 128),
        ("steps[2].package.sha512", "must be 128 lowercase hex digits"),
    ),
    (
        "negative size",
        lambda w: _pkg(w).update(size=-1),
        ("steps[2].package.size", "expected an integer >= 0"),
    ),
    (
        "file name with a slash",
        lambda w: _pkg(w).update(fileName="../x.nupkg"),
        ("steps[2].package.fileName", "must be a plain file name"),
    ),
    (
        "mirrors a string",
        lambda w: _pkg(w).update(mirrors="https://m"),
        ("steps[2].package.mirrors", "expected a list, got a string"),
    ),
    (
        "mirror empty",
        lambda w: _pkg(w).update(mirrors=[""]),
        ("steps[2].package.mirrors[0]", "expected a string of length >= 1"),
    ),
    (
        "package unknown field",
        lambda w: _pkg(w).update(url="x"),
        ("steps[2].package.url", "unknown field"),
    ),
    (
        "timeout missing",
        lambda w: w["steps"][1].pop("timeoutSeconds"),
        ("steps[1].timeoutSeconds", "required"),
    ),
    (
        "package feed missing",
        lambda w: _pkg(w).pop("feed"),
        ("steps[2].package.feed", "required"),
    ),
    (
        "index past the last step",
        lambda w: w["steps"][3].update(index=500),
        ("steps[3].index", "expected an integer <= 499"),
    ),
    (
        "package id with a trailing newline",
        lambda w: _pkg(w).update(id="OctoPetShop.Db\n"),
        ("steps[2].package.id", "must be a package id (letters, digits, '.', '_', '-')"),
    ),
    (
        "variable sensitive missing",
        lambda w: w["variables"][0].pop("sensitive"),
        ("variables[0].sensitive", "required"),
    ),
    (
        "duplicate variable",
        lambda w: w["variables"].append(dict(w["variables"][0])),
        ("variables[3].name", "duplicate variable name"),
    ),
]


@pytest.mark.parametrize(
    ("change", "problem"), [case[1:] for case in BAD_PLANS], ids=[case[0] for case in BAD_PLANS]
)
def test_from_json_names_the_bad_field(
    change: Callable[[dict[str, Any]], object], problem: tuple[str, str]
) -> None:
    """from_json rejects each broken rule, naming the field."""
    wire = _wire()
    change(wire)
    with pytest.raises(PlanError) as caught:
        Plan.from_json(wire)
    assert caught.value.problems == [problem]


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=6),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["taskId", "kind", "steps", "index", "package", "mirrors", "x"]),
                children,
                max_size=5,
            )
        ),
        max_leaves=30,
    )
)
def test_from_json_raises_only_plan_error(obj: object) -> None:
    """Plan.from_json never raises anything but PlanError, whatever it is given."""
    try:
        plan = Plan.from_json(obj)
    except PlanError:
        return
    assert Plan.from_json(plan.to_json()) == plan
