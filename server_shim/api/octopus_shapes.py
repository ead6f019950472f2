"""Octopus Deploy's Executions API commands, as typed structs: what its own clients send.

The official clients (``@octopusdeploy/api-client``, under Octopus's CI actions) send a
command's fields in PascalCase (``ProjectName``, ``EnvironmentNames``) beside three
camelCase keys naming the space (``spaceId``, ``spaceIdOrName``, ``spaceName``). Octopus
reads keys in any case, and so does `decode_command`: each key is mapped to the field
whose name it spells, then msgspec checks types as for every other body (a problem names
its path: ``EnvironmentNames[1]: expected a string, got an integer``).

Each command becomes this project's own request body (`ours`), which the project's own
routes carry out: nothing here decides anything about releases or deployments. What
Octopus offers and this server does not (guided failure, prompted variables, Git refs,
deployment freezes, ...) is listed by `unsupported` and refused with a 400 naming every
such field, never accepted and ignored. Where Octopus and this project name one thing
differently: Octopus's ``ForcePackageDownload`` (fetch packages again, cached or not) is
our ``forcePackageRedeployment``; Octopus's ``ForcePackageRedeployment`` (run a package's
step even when that version is installed) is what this server always does.

The answers are in `octopus_answers`.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from server_shim.api.bodies import (
    MAX_NAMES,
    DeploymentRequest,
    Moment,
    Name,
    ReleaseRequest,
    RunbookRunRequest,
    TenantedDeploymentRequest,
    refusal,
)
from tentacle.protocol import wire
from tentacle.protocol.channel_rules import DEFAULT_CHANNEL
from tentacle.protocol.process import Process
from tentacle.protocol.wire import WireError

C = TypeVar("C", bound="Command")
#: The keys naming the space: the only camelCase ones Octopus's clients send.
SPACE_KEYS = frozenset({"spaceId", "spaceIdOrName", "spaceName"})
Text = Annotated[str, Meta(max_length=200)]
LongText = Annotated[str, Meta(max_length=100_000)]
OptNames = Annotated[tuple[Name, ...], Meta(max_length=MAX_NAMES)] | None
_WHY_GIT = "Git refs are not supported here: a project is the process document this server keeps"


def is_octopus_shaped(keys: list[str]) -> bool:
    """Whether a JSON object's keys are an Octopus command's: a space key, or a PascalCase one.

    This project's own bodies are camelCase and never carry a space key (the URL names it).
    """
    return any(key in SPACE_KEYS or key[:1].isupper() for key in keys)


def decode_command(document: dict[str, Any], kind: type[C]) -> C:
    """`document` as `kind`, its keys read in any case (as Octopus reads them)."""
    names = _names_by_lower(kind)
    normalized: dict[str, Any] = {}
    for key, value in document.items():
        name = names.get(key.lower(), key)
        if name in normalized:
            raise refusal(name, "given twice (keys are read in any case)")
        normalized[name] = value
    return wire.convert(normalized, kind)


@functools.cache
def _names_by_lower(kind: type[msgspec.Struct]) -> dict[str, str]:
    return {f.encode_name.lower(): f.encode_name for f in msgspec.structs.fields(kind)}


def _given(value: object) -> bool:
    """Whether an optional field says anything: not null, not empty."""
    return value is not None and value not in ("", (), {}, [])


class Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="pascal"):
    """What every Octopus command carries: the space, which must be the URL's."""

    space_id: Text | None = msgspec.field(default=None, name="spaceId")
    space_id_or_name: Text | None = msgspec.field(default=None, name="spaceIdOrName")
    space_name: Text | None = msgspec.field(default=None, name="spaceName")

    def check_space(self, name: str, space_id: str) -> None:
        """Refuse a body whose space keys name another space than the URL's."""
        for key, value, allowed in (
            ("spaceId", self.space_id, (space_id,)),
            ("spaceIdOrName", self.space_id_or_name, (space_id, name)),
            ("spaceName", self.space_name, (name,)),
        ):
            if _given(value) and value not in allowed:
                raise refusal(key, f"{value!r} is not the space of the URL ({name}, {space_id})")

    def unsupported(self) -> list[str]:
        """Each field given that this server does not support, with why (empty: none)."""
        return []


class ExecutionCommand(Command, frozen=True, kw_only=True):
    """What deployments and runbook runs share (Octopus's ``CreateExecutionBaseV1``)."""

    project_name: Name
    force_package_download: bool = False
    specific_machine_names: OptNames = None
    excluded_machine_names: OptNames = None
    skip_step_names: OptNames = None
    use_guided_failure: bool | None = None
    run_at: Moment | None = None
    no_run_after: Moment | None = None
    variables: dict[Text, LongText] | None = None
    deployment_freeze_override_reason: LongText | None = None
    deployment_freeze_names: tuple[Text, ...] | None = None

    def unsupported(self) -> list[str]:
        """Guided failure, prompted variables and deployment freezes."""
        problems = []
        if self.use_guided_failure:
            problems.append(
                "UseGuidedFailure: guided failure is not supported here (a failed step fails the task);"
                " leave it out or send false"
            )
        if _given(self.variables):
            problems.append(
                "Variables: prompted variables are not supported here; give values as project or"
                " tenant variables"
            )
        for key, value in (
            ("DeploymentFreezeNames", self.deployment_freeze_names),
            ("DeploymentFreezeOverrideReason", self.deployment_freeze_override_reason),
        ):
            if _given(value):
                problems.append(f"{key}: deployment freezes are not supported here")
        return problems

    def options(self) -> dict[str, Any]:
        """Our `DeploymentOptions` fields (camelCase, as our bodies take them) of this command."""
        return {
            "specificMachineNames": self.specific_machine_names or (),
            "excludedMachineNames": self.excluded_machine_names or (),
            "skipStepNames": self.skip_step_names or (),
            "forcePackageRedeployment": self.force_package_download,
            "runAt": self.run_at,
            "noRunAfter": self.no_run_after,
        }


class DeploymentCommand(ExecutionCommand, frozen=True, kw_only=True):
    """What both create-deployment commands share."""

    release_version: Name
    force_package_redeployment: bool = False  # what this server always does (see the module's words)
    update_variable_snapshot: bool = False

    def unsupported(self) -> list[str]:
        """As `ExecutionCommand`, and a new variable snapshot for an existing release."""
        problems = super().unsupported()
        if self.update_variable_snapshot:
            problems.append(
                "UpdateVariableSnapshot: a release keeps the variables it was created with here;"
                " create a new release for new values"
            )
        return problems


class CreateDeploymentUntenanted(DeploymentCommand, frozen=True, kw_only=True):
    """``POST /api/{spaceId}/deployments/create/untenanted/v1``."""

    environment_names: Annotated[tuple[Name, ...], Meta(min_length=1, max_length=MAX_NAMES)]

    def ours(self) -> DeploymentRequest:
        """This project's request for the same deployment."""
        fields = {
            "projectName": self.project_name,
            "releaseVersion": self.release_version,
            "environmentNames": self.environment_names,
        }
        return wire.convert({**fields, **self.options()}, DeploymentRequest)


class CreateDeploymentTenanted(DeploymentCommand, frozen=True, kw_only=True):
    """``POST /api/{spaceId}/deployments/create/tenanted/v1``: tenants by name and by tag."""

    environment_name: Name
    tenants: OptNames = None
    tenant_tags: Annotated[tuple[Text, ...], Meta(max_length=MAX_NAMES)] | None = None

    def ours(self) -> TenantedDeploymentRequest:
        """This project's request for the same deployments (our rules check the tags' form)."""
        fields = {
            "projectName": self.project_name,
            "releaseVersion": self.release_version,
            "environmentName": self.environment_name,
            "tenantNames": self.tenants or (),
            "tenantTags": self.tenant_tags or (),
        }
        return wire.convert({**fields, **self.options()}, TenantedDeploymentRequest)


class CreateRunbookRun(ExecutionCommand, frozen=True, kw_only=True):
    """``POST /api/{spaceId}/runbook-runs/create/v1``."""

    runbook_name: Name
    environment_names: Annotated[tuple[Name, ...], Meta(min_length=1, max_length=MAX_NAMES)]
    tenants: OptNames = None
    tenant_tags: Annotated[tuple[Text, ...], Meta(max_length=MAX_NAMES)] | None = None
    snapshot: Text | None = None

    def unsupported(self) -> list[str]:
        """As `ExecutionCommand`, and tenants and snapshots, which runbook runs here do not have."""
        problems = super().unsupported()
        for key, value in (("Tenants", self.tenants), ("TenantTags", self.tenant_tags)):
            if _given(value):
                problems.append(f"{key}: tenanted runbook runs are not supported here")
        if _given(self.snapshot):
            problems.append(
                "Snapshot: runbook snapshots are not supported here; a runbook runs the project's"
                " current process"
            )
        return problems

    def ours(self) -> RunbookRunRequest:
        """This project's request for the same run."""
        fields = {
            "projectName": self.project_name,
            "runbookName": self.runbook_name,
            "environmentNames": self.environment_names,
        }
        return wire.convert({**fields, **self.options()}, RunbookRunRequest)


class CreateRelease(Command, frozen=True, kw_only=True):
    """``POST /api/{spaceId}/releases/create/v1``.

    ``Packages`` entries are ``PackageId:Version``, ``StepName:Version`` or
    ``StepName:PackageId:Version`` (``*`` for any; ``=`` or ``/`` may stand for ``:``);
    ``PackageVersion`` is the version of every package no entry names.
    """

    project_name: Name
    release_version: Annotated[str, Meta(max_length=100)] | None = None
    package_version: Annotated[str, Meta(max_length=100)] | None = None
    packages: (
        Annotated[tuple[Annotated[str, Meta(max_length=500)], ...], Meta(max_length=MAX_NAMES)] | None
    ) = None
    channel_name: Text | None = None
    ignore_if_already_exists: bool = False
    ignore_channel_rules: bool = False
    release_notes: LongText | None = None
    git_ref: Text | None = None
    git_commit: Text | None = None
    git_resources: list[Any] | None = None
    package_prerelease: Text | None = None
    custom_fields: dict[Text, LongText] | None = None

    def unsupported(self) -> list[str]:
        """Git refs, release notes, custom fields and prerelease package picking."""
        problems = [
            f"{key}: {_WHY_GIT}"
            for key, value in (
                ("GitRef", self.git_ref),
                ("GitCommit", self.git_commit),
                ("GitResources", self.git_resources),
            )
            if _given(value)
        ]
        if _given(self.release_notes):
            problems.append("ReleaseNotes: release notes are not kept here")
        if _given(self.custom_fields):
            problems.append("CustomFields: custom fields are not kept here")
        if _given(self.package_prerelease):
            problems.append(
                "PackagePrerelease: not supported here; give versions with Packages or PackageVersion,"
                " or a channel's preReleaseTag rule"
            )
        return problems

    def version(self) -> str | None:
        """The release version asked for (None: the server makes one)."""
        return self.release_version or None

    def ours(self, process: Process) -> ReleaseRequest:
        """This project's request for the same release (`process`: the project's, to read step names)."""
        versions = package_versions(process, self.packages or (), self.package_version or None)
        checked: dict[str, Any] = {"projectName": self.project_name, "packageVersions": versions}
        if self.version() is not None:
            checked["releaseVersion"] = self.version()
        checked["channelName"] = self.channel_name or DEFAULT_CHANNEL
        checked["ignoreChannelRules"] = self.ignore_channel_rules
        return wire.convert(checked, ReleaseRequest)


def package_versions(process: Process, specs: tuple[str, ...], default: str | None) -> dict[str, str]:
    """Our ``packageVersions`` from Octopus's ``Packages`` entries and ``PackageVersion``.

    A specific entry wins over ``*`` and over ``PackageVersion``; two specific entries giving
    one package two versions are refused, naming the second.
    """
    steps = {s.name: s.package.id for s in _all_steps(process) if s.package is not None}
    used = sorted(process.package_ids())
    chosen: dict[str, str] = dict.fromkeys(used, default) if default else {}
    wildcard: dict[str, str] = {}
    specific: dict[str, str] = {}
    for index, spec in enumerate(specs):
        path = f"Packages[{index}]"
        ids, version = _package_spec(spec, path, steps, used)
        for package_id in ids:
            into = wildcard if len(ids) > 1 or spec.startswith("*") else specific
            if into is specific and specific.get(package_id, version) != version:
                raise refusal(
                    path, f"package {package_id!r} is given two versions ({specific[package_id]}, {version})"
                )
            into[package_id] = version
    return {**chosen, **wildcard, **specific}


def _all_steps(process: Process) -> list[Any]:
    return [*process.steps, *(step for runbook in process.runbooks.values() for step in runbook.steps)]


def _package_spec(spec: str, path: str, steps: dict[str, str], used: list[str]) -> tuple[list[str], str]:
    """The package ids one ``Packages`` entry names, and its version."""
    separator = ":" if ":" in spec else "=" if "=" in spec else "/"
    parts = spec.split(separator)
    if len(parts) not in (2, 3) or not all(parts[-1:]) or not parts[0]:
        raise refusal(
            path, f"{spec!r} must be PackageId:Version, StepName:Version or StepName:PackageId:Version"
        )
    *names, version = parts
    by_lower = {package_id.lower(): package_id for package_id in used}
    if len(names) == 2:
        step, package = names
        if package not in ("", "*"):
            found = by_lower.get(package.lower())
            if found is None:
                raise refusal(
                    path, f"the process uses no package {package!r} (it uses: {', '.join(used) or 'none'})"
                )
            return [found], version
        names = [step]
    name = names[0]
    if name == "*":
        return list(used), version
    if name.lower() in by_lower:
        return [by_lower[name.lower()]], version
    if name in steps:
        return [steps[name]], version
    raise refusal(
        path,
        f"no package or step with a package is named {name!r} (packages: {', '.join(used) or 'none'};"
        f" steps: {', '.join(sorted(steps)) or 'none'})",
    )


def unsupported_error(problems: list[str]) -> WireError:
    """The 400 for fields this server does not support, naming them; with several, each is one
    of Octopus's ``Errors`` (its clients show the message, then each of those on its own line)."""
    names = [problem.split(":", 1)[0] for problem in problems]
    if len(problems) == 1:
        return WireError(problems[0], details={"path": names[0]})
    message = f"{len(problems)} fields are not supported here ({', '.join(names)})"
    return WireError(message, details={"path": names[0], "problems": problems})
