"""Per-target plans: resolution by role and environment, and the script environment
(the JSON form: tests/test_plan_json.py)."""

from __future__ import annotations

import pytest

from tentacle.errors import TentacleError
from tentacle.protocol.plan import (
    Plan,
    PlanError,
    ResolvedVariable,
    resolve_plan,
    resolve_variables,
    script_environment,
    shell_name,
)
from tentacle.protocol.process import Variable
from tests.plan_helpers import FEEDS, PACKAGES, PROCESS, WEB_SHA, plan_for


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
