"""Per-target plans: resolution by role and environment, the JSON form, the script environment."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle.errors import TentacleError
from tentacle.protocol.plan import (
    PackageRef,
    Plan,
    PlanError,
    ResolvedVariable,
    resolve_plan,
    resolve_variables,
    script_environment,
    shell_name,
)
from tentacle.protocol.process import Variable, parse_process

WEB_SHA = "a" * 128
DB_SHA = "b" * 128
PACKAGES = {
    "OctoPetShop.Web": PackageRef("OctoPetShop.Web", "1.2.0", WEB_SHA, 1234, "web.1.2.0.nupkg"),
    "OctoPetShop.Db": PackageRef("OctoPetShop.Db", "3.0.1", DB_SHA, 99, "db.3.0.1.nupkg"),
}
FEEDS = {"mirrors": ["https://m1.example/v3/index.json", "https://m2.example/v3/index.json"]}

PROCESS = parse_process(
    {
        "name": "OctoPetShop",
        "steps": [
            {
                "name": "Open VPN",
                "phase": "preAcquisition",
                "roles": ["web"],
                "script": {"syntax": "bash", "body": "vpn-up.sh"},
            },
            {
                "name": "Deploy web",
                "roles": ["web"],
                "package": {"id": "OctoPetShop.Web"},
                "script": {"syntax": "bash", "body": 'cat "$PACKAGE_DIR/readme.txt"'},
            },
            {
                "name": "Migrate",
                "roles": ["db"],
                "package": {"id": "OctoPetShop.Db", "feed": "mirrors", "acquisition": "pull"},
                "script": {"syntax": "bash", "body": "./migrate.sh"},
                "timeoutSeconds": 120,
            },
            {
                "name": "Smoke test",
                "roles": ["web", "db"],
                "script": {"syntax": "python3", "body": "print('ok')"},
            },
        ],
        "variables": [
            {"name": "Db.Password", "value": "dev-pw", "sensitive": True},
            {
                "name": "Db.Password",
                "value": "prod-pw",
                "environments": ["Production"],
                "sensitive": True,
            },
            {"name": "Greeting", "value": "hello"},
            {"name": "Api Key", "value": "k3y", "roles": ["web"], "sensitive": True},
        ],
    }
)


def plan_for(
    machine: str,
    roles: Sequence[str],
    environment: str = "Production",
    packages: dict[str, PackageRef] = PACKAGES,
) -> Plan:
    """The example process resolved for one machine."""
    return resolve_plan(
        task_id="T-1",
        kind="deployment",
        steps=PROCESS.steps,
        variables=PROCESS.variables,
        project_name="OctoPetShop",
        release_version="1.0.0",
        environment=environment,
        machine_name=machine,
        machine_roles=roles,
        packages=packages,
        feeds=FEEDS,
    )


def values(plan: Plan) -> dict[str, str]:
    """A plan's variables as name to value."""
    return {variable.name: variable.value for variable in plan.variables}


# --- resolution ---------------------------------------------------------------------


def test_steps_are_kept_by_role_with_process_indices() -> None:
    """A target gets the steps of its roles, each keeping its index in the whole process."""
    web = plan_for("web-1", ["web"])
    db = plan_for("db-1", ["db"])
    assert [(s.index, s.name) for s in web.steps] == [
        (0, "Open VPN"),
        (1, "Deploy web"),
        (3, "Smoke test"),
    ]
    assert [(s.index, s.name) for s in db.steps] == [(2, "Migrate"), (3, "Smoke test")]
    assert db.steps[0].timeout_seconds == 120
    assert [s.index for s in plan_for("both", ["db", "web", "other"]).steps] == [0, 1, 2, 3]
    assert plan_for("none", ["cache"]).steps == ()


def test_builtin_package_has_no_mirrors() -> None:
    """A builtin-feed package is pinned to the release's file with the server as its source."""
    package = plan_for("web-1", ["web"]).steps[1].package
    assert package is not None
    assert (package.id, package.version, package.sha512, package.size) == (
        "OctoPetShop.Web",
        "1.2.0",
        WEB_SHA,
        1234,
    )
    assert (package.file_name, package.feed, package.acquisition) == (
        "web.1.2.0.nupkg",
        "builtin",
        "push",
    )
    assert package.mirrors == ()


def test_feed_package_gets_its_mirrors_in_order() -> None:
    """A package from a named feed carries that feed's mirror list, in order."""
    package = plan_for("db-1", ["db"]).steps[0].package
    assert package is not None
    assert package.acquisition == "pull"
    assert package.mirrors == tuple(FEEDS["mirrors"])


def test_missing_package_and_feed_are_named() -> None:
    """A package the release lacks and a feed the server lacks are both named in the error."""
    with pytest.raises(PlanError) as caught:
        resolve_plan(
            task_id="T-1",
            kind="deployment",
            steps=PROCESS.steps,
            variables=(),
            project_name="P",
            release_version="1",
            environment="E",
            machine_name="m",
            machine_roles=["web", "db"],
            packages={"OctoPetShop.Db": PACKAGES["OctoPetShop.Db"]},
            feeds={},
        )
    assert caught.value.problems == [
        ("steps[1].package", "the release pins no version of package 'OctoPetShop.Web'"),
        ("steps[2].package", "feed 'mirrors' is not configured with any mirror"),
    ]
    assert isinstance(caught.value, TentacleError)
    assert isinstance(caught.value, ValueError)


def test_packages_of_other_targets_steps_are_not_needed() -> None:
    """A target whose steps use no package resolves even if the release lacks others' packages."""
    plan = plan_for("db-1", ["db"], packages={"OctoPetShop.Db": PACKAGES["OctoPetShop.Db"]})
    assert [s.name for s in plan.steps] == ["Migrate", "Smoke test"]


def test_variables_by_environment_pick_the_most_specific() -> None:
    """An environment-scoped value beats the unscoped one, and applies only in its environment."""
    assert values(plan_for("web-1", ["web"], "Production"))["Db.Password"] == "prod-pw"
    assert values(plan_for("web-1", ["web"], "Staging"))["Db.Password"] == "dev-pw"


def test_variables_by_role() -> None:
    """A role-scoped variable reaches only machines with that role."""
    assert values(plan_for("web-1", ["web"]))["Api Key"] == "k3y"
    assert "Api Key" not in values(plan_for("db-1", ["db"]))


def test_specificity_counts_matching_scopes_regardless_of_order() -> None:
    """Two matching scopes beat one, even when the broader value comes later."""
    variables = [
        Variable(name="X", value="env+machine", environments=("Prod",), machines=("m1",)),
        Variable(name="X", value="env", environments=("Prod",)),
        Variable(name="X", value="any"),
    ]
    resolved = resolve_variables(variables, "Prod", ("web",), "m1")
    assert resolved == (ResolvedVariable("X", "env+machine", False),)
    assert resolve_variables(variables, "Prod", ("web",), "m2")[0].value == "env"
    assert resolve_variables(variables, "Test", ("web",), "m1")[0].value == "any"


def test_ties_go_to_the_later_value() -> None:
    """Between equally specific values the later one in the document wins."""
    variables = [
        Variable(name="X", value="first", roles=("web",)),
        Variable(name="X", value="second", environments=("Prod",)),
    ]
    assert resolve_variables(variables, "Prod", ("web",), "m")[0].value == "second"


def test_excluded_everywhere_means_absent_and_order_is_first_seen() -> None:
    """A name with no applicable value is absent; names keep their first-seen order."""
    variables = [
        Variable(name="B", value="1"),
        Variable(name="A", value="only-prod", environments=("Prod",)),
        Variable(name="B", value="2", machines=("m",)),
        Variable(name="C", value="3"),
    ]
    resolved = resolve_variables(variables, "Test", (), "m")
    assert [(v.name, v.value) for v in resolved] == [("B", "2"), ("C", "3")]


def test_sensitive_values_are_listed_longest_first() -> None:
    """sensitive_values lists each non-empty sensitive value once, longest first."""
    plan = plan_for("web-1", ["web"])
    assert plan.sensitive_values() == ["prod-pw", "k3y"]
    assert "hello" not in plan.sensitive_values()
    plain = Plan.from_json(
        dict(
            plan.to_json(),
            variables=[
                {"name": "A", "value": "", "sensitive": True},
                {"name": "B", "value": "abc", "sensitive": True},
                {"name": "C", "value": "abc", "sensitive": True},
                {"name": "D", "value": "longer", "sensitive": True},
            ],
        )
    )
    assert plain.sensitive_values() == ["longer", "abc"]


def test_sensitive_value_is_not_in_repr() -> None:
    """A plan's repr leaves variable values out."""
    assert "prod-pw" not in repr(plan_for("web-1", ["web"]))


def test_plan_helpers_split_phases_and_packages() -> None:
    """Helpers give the phases' steps, the distinct packages and a step by index."""
    plan = plan_for("both", ["web", "db"])
    assert [s.index for s in plan.pre_acquisition_steps()] == [0]
    assert [s.index for s in plan.deployment_steps()] == [1, 2, 3]
    assert [p.id for p in plan.packages()] == ["OctoPetShop.Web", "OctoPetShop.Db"]
    assert plan.step(2) is not None
    assert plan.step(2).name == "Migrate"  # type: ignore[union-attr]
    assert plan.step(7) is None


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


# --- script environment ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Greeting", "Greeting"),
        ("Db.Password", "Db_Password"),
        ("Api Key", "Api_Key"),
        ("a-b/c", "a_b_c"),
        ("1st", "_1st"),
        ("Ünïcode", "_n_code"),
        ("", "_"),
        ("OK_2", "OK_2"),
    ],
)
def test_shell_name(name: str, expected: str) -> None:
    """Characters outside [A-Za-z0-9_] become '_' and a leading digit gets a '_' prefix."""
    assert shell_name(name) == expected


def test_script_environment_has_variables_and_task_context() -> None:
    """A step sees every variable under its shell name, the TENTACLE_* context and PACKAGE_DIR."""
    plan = plan_for("web-1", ["web"])
    env = script_environment(plan, plan.steps[1], "/work/T-1/pkg")
    assert env == {
        "Db_Password": "prod-pw",
        "Greeting": "hello",
        "Api_Key": "k3y",
        "TENTACLE_MACHINE_NAME": "web-1",
        "TENTACLE_ENVIRONMENT": "Production",
        "TENTACLE_PROJECT": "OctoPetShop",
        "TENTACLE_RELEASE_VERSION": "1.0.0",
        "TENTACLE_TASK_ID": "T-1",
        "TENTACLE_STEP_NAME": "Deploy web",
        "PACKAGE_DIR": "/work/T-1/pkg",
    }


def test_script_environment_without_package_has_no_package_dir() -> None:
    """A script-only step gets no PACKAGE_DIR, even when a directory is passed."""
    plan = plan_for("web-1", ["web"])
    assert "PACKAGE_DIR" not in script_environment(plan, plan.steps[0], None)
    assert "PACKAGE_DIR" not in script_environment(plan, plan.steps[2], "/tmp/x")


def test_package_step_needs_its_directory() -> None:
    """Asking for a package step's environment without its directory is an error."""
    plan = plan_for("web-1", ["web"])
    with pytest.raises(PlanError, match=r"steps\[1\]\.package"):
        script_environment(plan, plan.steps[1], None)


def test_task_context_wins_over_a_variable_of_the_same_name() -> None:
    """A variable cannot disguise the task context by taking a TENTACLE_* name."""
    wire = plan_for("web-1", ["web"]).to_json()
    wire["variables"] = [{"name": "TENTACLE_TASK_ID", "value": "forged", "sensitive": False}]
    plan = Plan.from_json(wire)
    assert script_environment(plan, plan.steps[0], None)["TENTACLE_TASK_ID"] == "T-1"
