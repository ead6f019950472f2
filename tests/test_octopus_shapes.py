"""The Octopus adapter's pure parts: telling the shapes apart, reading commands, wording answers."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import msgspec
import pytest

from server_shim.api import octopus_answers as out
from server_shim.api.octopus_shapes import (
    CreateDeploymentTenanted,
    CreateDeploymentUntenanted,
    CreateRelease,
    CreateRunbookRun,
    decode_command,
    is_octopus_shaped,
    package_versions,
    unsupported_error,
)
from server_shim.dispatch import timetable
from server_shim.store.spaces import Space
from server_shim.store.task_rows import TaskRecord
from tentacle.protocol.coordinator import TaskCoordinator
from tentacle.protocol.plan import resolve_plan
from tentacle.protocol.process import parse_process
from tentacle.protocol.wire import WireError

PROCESS = parse_process(
    {
        "name": "Shop",
        "steps": [
            {"name": "Web", "roles": ["web"], "package": {"id": "Shop.Web"}},
            {"name": "Db", "roles": ["db"], "package": {"id": "Shop.Db"}},
            {"name": "Say", "roles": ["web"], "script": {"syntax": "bash", "body": "true"}},
        ],
        "runbooks": {
            "Tools": {"steps": [{"name": "Dump", "roles": ["db"], "package": {"id": "Shop.Tools"}}]}
        },
    }
)
SPACE = Space("Default", "Spaces-1", 0.0)


def test_octopus_bodies_are_told_from_ours_by_their_keys() -> None:
    """A space key or a PascalCase key makes a body Octopus's; our camelCase bodies have neither."""
    assert is_octopus_shaped(["spaceName", "projectName"])  # an older Octopus client, camelCase
    assert is_octopus_shaped(["ProjectName", "ReleaseVersion"])
    assert not is_octopus_shaped(["projectName", "releaseVersion", "packageVersions"])
    assert not is_octopus_shaped([])


def test_keys_are_read_in_any_case_and_a_key_twice_is_refused() -> None:
    """``projectName`` and ``PROJECTNAME`` are ``ProjectName``; both at once is a 400 naming it."""
    command = decode_command(
        {
            "spaceName": "Default",
            "projectname": "Shop",
            "RELEASEVERSION": "1.0.0",
            "EnvironmentNames": ["Dev"],
        },
        CreateDeploymentUntenanted,
    )
    assert (command.project_name, command.release_version, command.environment_names) == (
        "Shop",
        "1.0.0",
        ("Dev",),
    )
    with pytest.raises(WireError, match=r"^ProjectName: given twice"):
        decode_command({"ProjectName": "a", "projectName": "b"}, CreateRelease)
    with pytest.raises(WireError, match=r"^Colour: unknown field"):
        decode_command({"ProjectName": "a", "Colour": "red"}, CreateRelease)
    with pytest.raises(WireError, match=r"^EnvironmentNames\[1\]: expected a string"):
        decode_command(
            {"ProjectName": "a", "ReleaseVersion": "1", "EnvironmentNames": ["a", 2]},
            CreateDeploymentUntenanted,
        )


def test_a_body_naming_another_space_than_the_url_is_refused() -> None:
    """spaceId, spaceIdOrName and spaceName must each name the URL's space."""
    ok = decode_command(
        {"spaceId": "Spaces-1", "spaceIdOrName": "Default", "spaceName": "Default", "ProjectName": "a"},
        CreateRelease,
    )
    ok.check_space("Default", "Spaces-1")
    wrong = decode_command({"spaceIdOrName": "Spaces-2", "ProjectName": "a"}, CreateRelease)
    with pytest.raises(WireError, match=r"^spaceIdOrName: 'Spaces-2' is not the space of the URL"):
        wrong.check_space("Default", "Spaces-1")


@pytest.mark.parametrize(
    ("kind", "body", "fields"),
    [
        (
            CreateDeploymentUntenanted,
            {"UseGuidedFailure": True, "Variables": {"A": "b"}},
            ["UseGuidedFailure", "Variables"],
        ),
        (CreateDeploymentUntenanted, {"UpdateVariableSnapshot": True}, ["UpdateVariableSnapshot"]),
        (
            CreateDeploymentTenanted,
            {"DeploymentFreezeNames": ["Xmas"], "DeploymentFreezeOverrideReason": "fix"},
            ["DeploymentFreezeNames", "DeploymentFreezeOverrideReason"],
        ),
        (CreateRunbookRun, {"Tenants": ["Acme"], "Snapshot": "RunbookSnapshots-1"}, ["Tenants", "Snapshot"]),
        (
            CreateRelease,
            {"GitRef": "main", "GitCommit": "abc", "ReleaseNotes": "n", "CustomFields": {"a": "b"}},
            ["GitRef", "GitCommit", "ReleaseNotes", "CustomFields"],
        ),
        (
            CreateRelease,
            {"PackagePrerelease": "beta", "GitResources": [{"x": 1}]},
            ["GitResources", "PackagePrerelease"],
        ),
    ],
)
def test_unsupported_fields_are_each_named(kind: Any, body: dict[str, Any], fields: list[str]) -> None:
    """Every field this server does not support is named, with why, in the order of the command."""
    base = {
        "ProjectName": "Shop",
        "ReleaseVersion": "1",
        "EnvironmentNames": ["Dev"],
        "EnvironmentName": "Dev",
        "RunbookName": "R",
    }
    known = {key: value for key, value in base.items() if key.lower() in {f.lower() for f in _fields(kind)}}
    problems = decode_command({**known, **body}, kind).unsupported()
    assert [problem.split(":")[0] for problem in problems] == fields
    error = unsupported_error(problems)
    assert error.details["path"] == fields[0]
    assert error.message == (
        problems[0]
        if len(fields) == 1
        else f"{len(fields)} fields are not supported here ({', '.join(fields)})"
    )


def _fields(kind: Any) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(kind)]


def test_what_octopus_sends_by_default_is_accepted() -> None:
    """False, null and empty values of unsupported fields ask for nothing: no refusal."""
    body = {
        "ProjectName": "Shop",
        "ReleaseVersion": "1",
        "EnvironmentNames": ["Dev"],
        "UseGuidedFailure": False,
        "Variables": {},
        "DeploymentFreezeNames": [],
        "DeploymentFreezeOverrideReason": None,
        "UpdateVariableSnapshot": False,
        "ForcePackageRedeployment": True,  # what this server always does
    }
    assert decode_command(body, CreateDeploymentUntenanted).unsupported() == []
    release = {
        "ProjectName": "Shop",
        "GitRef": "",
        "ReleaseNotes": "",
        "CustomFields": {},
        "GitResources": [],
    }
    assert decode_command(release, CreateRelease).unsupported() == []


def test_a_deployment_becomes_our_request_with_its_options() -> None:
    """Machines, skipped steps, ForcePackageDownload and the schedule map to our options."""
    command = decode_command(
        {
            "ProjectName": "Shop",
            "ReleaseVersion": "1.0.0",
            "EnvironmentNames": ["Dev"],
            "SpecificMachineNames": ["web-01"],
            "ExcludedMachineNames": ["web-02"],
            "SkipStepNames": ["Db"],
            "ForcePackageDownload": True,
            "RunAt": "2030-01-01T10:00:00.000Z",
            "NoRunAfter": "2030-01-01T11:00:00.000Z",
        },
        CreateDeploymentUntenanted,
    )
    ours = command.ours()
    assert ours.specific_machine_names == ("web-01",) and ours.excluded_machine_names == ("web-02",)
    assert ours.skip_step_names == ("Db",) and ours.force_package_redeployment
    assert ours.run_at is not None and ours.run_at.isoformat() == "2030-01-01T10:00:00+00:00"
    tenanted = decode_command(
        {
            "ProjectName": "Shop",
            "ReleaseVersion": "1",
            "EnvironmentName": "Dev",
            "Tenants": ["Acme"],
            "TenantTags": ["Region/EU"],
        },
        CreateDeploymentTenanted,
    ).ours()
    assert tenanted.tenant_names == ("Acme",) and tenanted.tenant_tags == ("Region/EU",)
    with pytest.raises(WireError, match=r"^tenantTags\[0\]"):
        decode_command(
            {
                "ProjectName": "Shop",
                "ReleaseVersion": "1",
                "EnvironmentName": "Dev",
                "TenantTags": ["x"],
            },
            CreateDeploymentTenanted,
        ).ours()


def test_package_entries_name_packages_by_id_or_by_step() -> None:
    """PackageId:Version, StepName:Version, Step:PackageId:Version and * all land on package ids."""
    assert package_versions(PROCESS, ("shop.web:1.1.0", "Db:2.0.0"), None) == {
        "Shop.Web": "1.1.0",
        "Shop.Db": "2.0.0",
    }
    assert package_versions(PROCESS, ("Dump:Shop.Tools:0.3.0",), None) == {"Shop.Tools": "0.3.0"}
    assert package_versions(PROCESS, ("*:5.0.0", "Web:1.0.0"), None) == {
        "Shop.Web": "1.0.0",
        "Shop.Db": "5.0.0",
        "Shop.Tools": "5.0.0",
    }
    assert package_versions(PROCESS, ("Web=1.2.0",), "3.0.0") == {
        "Shop.Web": "1.2.0",
        "Shop.Db": "3.0.0",
        "Shop.Tools": "3.0.0",
    }
    assert package_versions(PROCESS, (), None) == {}


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("Nothing:1.0.0", "no package or step with a package is named 'Nothing'"),
        ("Say:1.0.0", "no package or step with a package is named 'Say'"),  # a step without a package
        ("Web:Other.Pkg:1.0.0", "the process uses no package 'Other.Pkg'"),
        ("1.0.0", "must be PackageId:Version, StepName:Version or StepName:PackageId:Version"),
        ("Web:", "must be PackageId:Version"),
    ],
)
def test_a_package_entry_that_names_nothing_is_refused(spec: str, why: str) -> None:
    """An entry naming no package, or of no known form, is a 400 naming Packages[i]."""
    with pytest.raises(WireError, match=r"^Packages\[1\]: ") as caught:
        package_versions(PROCESS, ("Web:1.0.0", spec), None)
    assert why in caught.value.message


def test_one_package_given_two_versions_is_refused() -> None:
    """By id and by its step, two different versions: refused; the same version twice is fine."""
    assert package_versions(PROCESS, ("Shop.Web:1.0.0", "Web:1.0.0"), None) == {"Shop.Web": "1.0.0"}
    with pytest.raises(WireError, match=r"^Packages\[1\]: package 'Shop.Web' is given two versions"):
        package_versions(PROCESS, ("Shop.Web:1.0.0", "Web:2.0.0"), None)


def test_a_release_command_becomes_our_request() -> None:
    """Version, channel and rules pass through; an empty version or channel means the default."""
    command = decode_command(
        {
            "ProjectName": "Shop",
            "ReleaseVersion": "",
            "ChannelName": "",
            "PackageVersion": "1.0.0",
            "IgnoreChannelRules": True,
        },
        CreateRelease,
    )
    ours = command.ours(PROCESS)
    assert ours.channel_name == "Default" and ours.ignore_channel_rules and command.version() is None
    assert ours.package_versions == {"Shop.Web": "1.0.0", "Shop.Db": "1.0.0", "Shop.Tools": "1.0.0"}


def _record(state: str, **changes: Any) -> tuple[TaskRecord, TaskCoordinator]:
    plan = resolve_plan(
        task_id="T-00aa11bb22cc",
        kind="deployment",
        steps=PROCESS.steps[2:],
        variables=(),
        project_name="Shop",
        release_version="1.0.0",
        environment="Dev",
        machine_name="web-01",
        machine_roles=("web",),
        packages={},
        feeds={},
    )
    coordinator = TaskCoordinator("T-00aa11bb22cc", {"web-01": plan})
    fields: dict[str, Any] = {
        "task_id": "T-00aa11bb22cc",
        "space": "Default",
        "kind": "deployment",
        "project": "Shop",
        "release_version": "1.0.0",
        "runbook": None,
        "environment": "Dev",
        "state": state,
        "error": None,
        "created_at": time.time() - 90,
        "finished_at": None,
        "plans": {},
        "coordinator": coordinator.snapshot(),
        **changes,
    }
    return TaskRecord(**fields), coordinator


def test_task_states_in_octopus_words() -> None:
    """queued, running, success, failed and cancelled read as Octopus's states; IsCompleted follows."""
    for ours, theirs, completed in [
        ("queued", "Queued", False),
        ("running", "Executing", False),
        ("success", "Success", True),
        ("failed", "Failed", True),
        ("cancelled", "Canceled", True),
    ]:
        record, coordinator = _record(ours)
        task = out.server_task(record, coordinator, SPACE)
        assert (task.state, task.is_completed, task.finished_successfully) == (
            theirs,
            completed,
            theirs == "Success",
        )


def test_a_cancel_in_progress_reads_cancelling_and_an_expired_task_timed_out() -> None:
    """Running with a cancel asked for is Cancelling; cancelled because noRunAfter passed is TimedOut."""
    record, coordinator = _record("running")
    coordinator.start()
    coordinator.cancel("cancelled by admin")
    assert out.state_of(record, coordinator) == "Cancelling"
    expired, coordinator = _record("cancelled", no_run_after=time.time() - 5)
    expired = dataclasses.replace(expired, error=timetable.expiry_reason(expired))
    assert out.state_of(expired, coordinator) == "TimedOut"
    task = out.server_task(expired, coordinator, SPACE)
    assert task.is_completed and task.error_message.startswith("not started before noRunAfter")


def test_ids_and_the_root_document() -> None:
    """Deployment and runbook run ids come from the task id; release ids and the installation are stable."""
    record, _ = _record("success")
    assert out.execution_id(record) == "Deployments-00aa11bb22cc"
    runbook, _ = _record("success", kind="runbook", runbook="Restart")
    assert out.execution_id(runbook) == "RunbookRuns-00aa11bb22cc"
    assert out.release_id(SPACE, "Shop", "1.0.0") == out.release_id(SPACE, "Shop", "1.0.0")
    assert out.release_id(SPACE, "Shop", "1.0.0") != out.release_id(SPACE, "Shop", "1.0.1")
    installation = out.installation_id("pem")
    assert installation == out.installation_id("pem") and len(installation) == 36
