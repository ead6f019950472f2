"""The plan one target runs: resolved from a process for that target, and its JSON form.

`resolve_plan` is what the server does per target: keep the steps whose roles the
machine has and that the request does not skip (each keeps its ``index`` in the whole
process, so every target numbers steps alike), pick each variable's most specific value
for this machine (a tenant's value of a name overrides the project's), and pin every
package to the release's exact file (``sha512``, ``size``) and its sources.

Two fields are written only when they say something (`UNSET` otherwise), so a plan
without them reads as before: ``tenantName`` (a tenanted deployment; scripts see
``TENTACLE_TENANT_NAME``) and ``forcePackageRedeployment`` (acquire every package again,
even when the cache has it).

A plan is a msgspec struct; `Plan.to_json` / `Plan.from_json` are its wire form
(camelCase), the one the server stores and sends and the tentacle keeps on disk.
`from_json` is as strict as the process parser: unknown fields are errors, because a
tentacle that ignored a field it does not understand could run something other than
was meant, and every field is spelled out (see `_SPELLED_OUT`). `script_environment`
gives a step's environment variables.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, UnsetType

from tentacle.protocol.documents import (
    FILE_NAME,
    NAME_MAX,
    SHA512,
    TEXT,
    DocumentError,
    Name,
    convert_document,
    json_values,
    over_bytes,
)
from tentacle.protocol.process import (
    BUILTIN_FEED,
    DEFAULT_TIMEOUT,
    MAX_STEPS,
    MAX_VALUE_BYTES,
    MAX_VARIABLES,
    Acquisition,
    PackageId,
    PackageUse,
    Phase,
    Script,
    Step,
    Timeout,
    Value,
    Variable,
    step_rule_problems,
)
from tentacle.protocol.wire import Wire

Kind = Literal["deployment", "runbook"]
KINDS: Final = ("deployment", "runbook")
MAX_URL: Final = 2048
MAX_SIZE: Final = 2**63 - 1
MAX_MIRRORS: Final = 100

_SHELL_UNSAFE = re.compile(r"[^A-Za-z0-9_]")

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL, pattern=TEXT)]
Version = Annotated[str, msgspec.Meta(max_length=NAME_MAX, pattern=TEXT)]


class PlanError(DocumentError):
    """A plan cannot be resolved or decoded; ``problems`` name each field."""


@dataclass(frozen=True)
class PackageRef:
    """The exact package file a release pinned for one package id."""

    id: str
    version: str
    sha512: str
    size: int
    file_name: str


class PlannedPackage(Wire, frozen=True, kw_only=True):
    """A pinned package with where a target gets it: the server (push) or mirrors (pull)."""

    id: PackageId
    version: Name
    sha512: Annotated[str, msgspec.Meta(pattern=SHA512)]
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_SIZE)]
    file_name: Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX, pattern=FILE_NAME)]
    feed: Name = BUILTIN_FEED
    acquisition: Acquisition = "push"
    mirrors: Annotated[tuple[Url, ...], msgspec.Meta(max_length=MAX_MIRRORS)] = ()


class PlannedStep(Wire, frozen=True, kw_only=True):
    """A step as one target runs it; ``index`` is its position in the whole process."""

    index: Annotated[int, msgspec.Meta(ge=0, le=MAX_STEPS - 1)]
    name: Name
    phase: Phase = "deployment"
    script: Script | None = None
    package: PlannedPackage | None = None
    timeout_seconds: Timeout = DEFAULT_TIMEOUT


class ResolvedVariable(Wire, frozen=True, kw_only=False):
    """The one value of a variable that applies to a target."""

    name: Name
    value: Value
    sensitive: bool = False

    def __repr__(self) -> str:
        """Without the value: a sensitive one must not reach a log through a repr."""
        return f"ResolvedVariable(name={self.name!r}, sensitive={self.sensitive!r})"


class Plan(Wire, frozen=True, kw_only=True):
    """Everything one target needs to run its part of a task."""

    task_id: Name
    kind: Kind
    project_name: Name
    release_version: Version
    environment_name: Name
    machine_name: Name
    steps: Annotated[tuple[PlannedStep, ...], msgspec.Meta(max_length=MAX_STEPS)] = ()
    variables: Annotated[tuple[ResolvedVariable, ...], msgspec.Meta(max_length=MAX_VARIABLES)] = ()
    tenant_name: Name | UnsetType = UNSET
    force_package_redeployment: bool | UnsetType = UNSET

    def to_json(self) -> dict[str, Any]:
        """The wire form (camelCase), as plain JSON values."""
        return json_values(self)

    @classmethod
    def from_json(cls, obj: object) -> Plan:
        """Decode and check the wire form; raises `PlanError` naming the bad field."""
        plan = convert_document(obj, cls, PlanError)
        problems = [*_missing(obj), *plan.rule_problems()]
        if problems:
            raise PlanError(problems)
        return plan

    def rule_problems(self) -> Iterator[tuple[str, str]]:
        """Every broken rule that the structs cannot say, with its path."""
        if self.kind == "deployment" and not self.release_version:
            yield "releaseVersion", "must be a non-empty string in a deployment"
        for position, step in enumerate(self.steps):
            path = f"steps[{position}]"
            if position and step.index <= self.steps[position - 1].index:
                yield f"{path}.index", "must be greater than the previous step's"
            yield from step_rule_problems(step, path)
        seen: set[str] = set()
        for position, variable in enumerate(self.variables):
            if variable.name in seen:
                yield f"variables[{position}].name", "duplicate variable name"
            seen.add(variable.name)
            if over_bytes(variable.value, MAX_VALUE_BYTES):
                yield f"variables[{position}].value", f"must be at most {MAX_VALUE_BYTES} bytes in UTF-8"

    def sensitive_values(self) -> list[str]:
        """The values to mask in logs, longest first (so a longer secret masks whole)."""
        values = {v.value for v in self.variables if v.sensitive and v.value}
        return sorted(values, key=lambda value: (-len(value), value))

    def pre_acquisition_steps(self) -> tuple[PlannedStep, ...]:
        """The steps that run before any package is acquired."""
        return tuple(step for step in self.steps if step.phase == "preAcquisition")

    def deployment_steps(self) -> tuple[PlannedStep, ...]:
        """The steps that run after every package is acquired, in order."""
        return tuple(step for step in self.steps if step.phase == "deployment")

    def packages(self) -> tuple[PlannedPackage, ...]:
        """The distinct packages (by id and version) this target must acquire."""
        unique: dict[tuple[str, str], PlannedPackage] = {}
        for step in self.steps:
            if step.package is not None:
                unique.setdefault((step.package.id, step.package.version), step.package)
        return tuple(unique.values())

    def step(self, index: int) -> PlannedStep | None:
        """The step with process index ``index``, or None when this target lacks it."""
        return next((step for step in self.steps if step.index == index), None)


# Fields that have a default in Python (for building plans in code) but that the wire
# form must still spell out: a plan says everything, and to_json always writes them.
_SPELLED_OUT: Final = {
    "step": ("phase", "timeoutSeconds"),
    "package": ("feed", "acquisition"),
    "variable": ("sensitive",),
}


def _missing(obj: object) -> Iterator[tuple[str, str]]:
    """The spelled-out fields absent from a wire plan that msgspec has already accepted."""
    if not isinstance(obj, dict):  # msgspec converted it to a Plan, so it is one; this tells mypy
        return
    for position, step in enumerate(obj.get("steps", ())):
        path = f"steps[{position}]"
        yield from ((f"{path}.{key}", "required") for key in _SPELLED_OUT["step"] if key not in step)
        package = step.get("package")
        if package is not None:
            keys = _SPELLED_OUT["package"]
            yield from ((f"{path}.package.{key}", "required") for key in keys if key not in package)
    for position, variable in enumerate(obj.get("variables", ())):
        keys = _SPELLED_OUT["variable"]
        yield from ((f"variables[{position}].{key}", "required") for key in keys if key not in variable)


def resolve_plan(
    *,
    task_id: str,
    kind: Kind,
    steps: Sequence[Step],
    variables: Sequence[Variable],
    project_name: str,
    release_version: str,
    environment: str,
    machine_name: str,
    machine_roles: Collection[str],
    packages: Mapping[str, PackageRef],
    feeds: Mapping[str, Sequence[str]],
    skip_steps: Collection[str] = (),
    tenant_name: str | None = None,
    tenant_variables: Sequence[Variable] = (),
    force_package_redeployment: bool = False,
) -> Plan:
    """The plan of one target; raises `PlanError` for a package or feed that is missing."""
    roles = tuple(machine_roles)
    problems: list[tuple[str, str]] = []
    planned = [
        _plan_step(index, step, packages, feeds, problems)
        for index, step in enumerate(steps)
        if any(role in roles for role in step.roles) and step.name not in skip_steps
    ]
    if problems:
        raise PlanError(problems)
    resolved = {v.name: v for v in resolve_variables(variables, environment, roles, machine_name)}
    resolved.update(
        (v.name, v) for v in resolve_variables(tenant_variables, environment, roles, machine_name)
    )
    return Plan(
        task_id=task_id,
        kind=kind,
        project_name=project_name,
        release_version=release_version,
        environment_name=environment,
        machine_name=machine_name,
        steps=tuple(planned),
        variables=tuple(resolved.values()),
        tenant_name=UNSET if tenant_name is None else tenant_name,
        force_package_redeployment=True if force_package_redeployment else UNSET,
    )


def _plan_step(
    index: int,
    step: Step,
    packages: Mapping[str, PackageRef],
    feeds: Mapping[str, Sequence[str]],
    problems: list[tuple[str, str]],
) -> PlannedStep:
    """One kept step; a package that cannot be pinned is recorded in ``problems``."""
    package = None
    if step.package is not None:
        package = _plan_package(f"steps[{index}].package", step.package, packages, feeds, problems)
    return PlannedStep(
        index=index,
        name=step.name,
        phase=step.phase,
        script=step.script,
        package=package,
        timeout_seconds=step.timeout_seconds,
    )


def _plan_package(
    path: str,
    use: PackageUse,
    packages: Mapping[str, PackageRef],
    feeds: Mapping[str, Sequence[str]],
    problems: list[tuple[str, str]],
) -> PlannedPackage | None:
    """The pinned package with its mirrors; builtin means the server itself is the source."""
    ref = packages.get(use.id)
    if ref is None:
        problems.append((path, f"the release pins no version of package {use.id!r}"))
    mirrors: Sequence[str] = ()
    if use.feed != BUILTIN_FEED:
        mirrors = feeds.get(use.feed, ())
        if not mirrors:
            problems.append((path, f"feed {use.feed!r} is not configured with any mirror"))
    if ref is None:
        return None
    return PlannedPackage(
        id=ref.id,
        version=ref.version,
        sha512=ref.sha512,
        size=ref.size,
        file_name=ref.file_name,
        feed=use.feed,
        acquisition=use.acquisition,
        mirrors=tuple(mirrors),
    )


def resolve_variables(
    variables: Sequence[Variable], environment: str, roles: Sequence[str], machine: str
) -> tuple[ResolvedVariable, ...]:
    """Each name's most specific applicable value (ties: the later one), in first-seen order."""
    best: dict[str, tuple[int, Variable]] = {}
    for variable in variables:
        score = variable.specificity(environment, tuple(roles), machine)
        if score is None:
            continue
        current = best.get(variable.name)
        if current is None or score >= current[0]:
            best[variable.name] = (score, variable)
    return tuple(ResolvedVariable(v.name, v.value, v.sensitive) for _, v in best.values())


def shell_name(name: str) -> str:
    """``name`` as a shell variable name: others than [A-Za-z0-9_] become ``_``."""
    safe = _SHELL_UNSAFE.sub("_", name)
    return f"_{safe}" if not safe or safe[0].isdigit() else safe


def script_environment(plan: Plan, step: PlannedStep, package_dir: str | None) -> dict[str, str]:
    """The environment variables a step's script sees (the TENTACLE_* ones win)."""
    env = {shell_name(variable.name): variable.value for variable in plan.variables}
    env.update(
        TENTACLE_MACHINE_NAME=plan.machine_name,
        TENTACLE_ENVIRONMENT=plan.environment_name,
        TENTACLE_PROJECT=plan.project_name,
        TENTACLE_RELEASE_VERSION=plan.release_version,
        TENTACLE_TASK_ID=plan.task_id,
        TENTACLE_STEP_NAME=step.name,
    )
    if plan.tenant_name is not UNSET:
        env["TENTACLE_TENANT_NAME"] = plan.tenant_name
    if step.package is not None:
        if package_dir is None:
            raise PlanError([(f"steps[{step.index}].package", "has no extracted directory")])
        env["PACKAGE_DIR"] = package_dir
    return env
