"""The plan one target runs: resolved from a process for that target, and its JSON form.

`resolve_plan` is what the server does per target: keep the steps whose roles the
machine has (each keeps its ``index`` in the whole process, so every target numbers
steps alike), pick each variable's most specific value for this machine, and pin
every package to the release's exact file (``sha512``, ``size``) and its sources.
`Plan.to_json` / `Plan.from_json` are the wire form (camelCase); `from_json` is as
strict as the process parser: unknown fields are errors, because a tentacle that
ignored a field it does not understand could run something other than was meant.
`script_environment` gives a step's environment variables.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from tentacle.protocol.documents import DocumentError, key_path
from tentacle.protocol.json_fields import FieldReader
from tentacle.protocol.process import (
    ACQUISITIONS,
    BUILTIN_FEED,
    DEFAULT_TIMEOUT,
    MAX_STEPS,
    MAX_TIMEOUT,
    MAX_VALUE_BYTES,
    MAX_VARIABLES,
    PHASES,
    Acquisition,
    PackageUse,
    Phase,
    Script,
    Step,
    Variable,
    read_package_id,
    read_script,
)

Kind = Literal["deployment", "runbook"]
KINDS: Final = ("deployment", "runbook")
MAX_URL: Final = 2048
MAX_SIZE: Final = 2**63 - 1

_SHA512 = re.compile(r"^[0-9a-f]{128}$")
_SHELL_UNSAFE = re.compile(r"[^A-Za-z0-9_]")

_PLAN_FIELDS: Final = (
    "taskId",
    "kind",
    "projectName",
    "releaseVersion",
    "environmentName",
    "machineName",
    "steps",
    "variables",
)
_STEP_FIELDS: Final = ("index", "name", "phase", "script", "package", "timeoutSeconds")
_PACKAGE_FIELDS: Final = (
    "id",
    "version",
    "sha512",
    "size",
    "fileName",
    "feed",
    "acquisition",
    "mirrors",
)


class PlanError(DocumentError):
    """A plan cannot be resolved or decoded; the message names the field."""


@dataclass(frozen=True)
class PackageRef:
    """The exact package file a release pinned for one package id."""

    id: str
    version: str
    sha512: str
    size: int
    file_name: str


@dataclass(frozen=True, kw_only=True)
class PlannedPackage:
    """A pinned package with where a target gets it: the server (push) or mirrors (pull)."""

    id: str
    version: str
    sha512: str
    size: int
    file_name: str
    feed: str = BUILTIN_FEED
    acquisition: Acquisition = "push"
    mirrors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {
            "id": self.id,
            "version": self.version,
            "sha512": self.sha512,
            "size": self.size,
            "fileName": self.file_name,
            "feed": self.feed,
            "acquisition": self.acquisition,
            "mirrors": list(self.mirrors),
        }


@dataclass(frozen=True, kw_only=True)
class PlannedStep:
    """A step as one target runs it; ``index`` is its position in the whole process."""

    index: int
    name: str
    phase: Phase = "deployment"
    script: Script | None = None
    package: PlannedPackage | None = None
    timeout_seconds: int = DEFAULT_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        body: dict[str, Any] = {"index": self.index, "name": self.name, "phase": self.phase}
        if self.script is not None:
            body["script"] = self.script.to_json()
        if self.package is not None:
            body["package"] = self.package.to_json()
        body["timeoutSeconds"] = self.timeout_seconds
        return body


@dataclass(frozen=True)
class ResolvedVariable:
    """The one value of a variable that applies to a target."""

    name: str
    value: str = field(repr=False)  # sensitive values must not reach logs via repr
    sensitive: bool = False

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {"name": self.name, "value": self.value, "sensitive": self.sensitive}


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Everything one target needs to run its part of a task."""

    task_id: str
    kind: Kind
    project_name: str
    release_version: str
    environment_name: str
    machine_name: str
    steps: tuple[PlannedStep, ...]
    variables: tuple[ResolvedVariable, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The wire form (camelCase)."""
        return {
            "taskId": self.task_id,
            "kind": self.kind,
            "projectName": self.project_name,
            "releaseVersion": self.release_version,
            "environmentName": self.environment_name,
            "machineName": self.machine_name,
            "steps": [step.to_json() for step in self.steps],
            "variables": [variable.to_json() for variable in self.variables],
        }

    @classmethod
    def from_json(cls, obj: object) -> Plan:
        """Decode and validate the wire form; raises `PlanError` naming every bad field."""
        reader = FieldReader()
        plan = _read_plan(reader, obj)
        reader.raise_if_any(PlanError)
        if plan is None:  # pragma: no cover - a None plan always records a problem
            raise PlanError([("document", "invalid plan")])
        return plan

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
) -> Plan:
    """The plan of one target; raises `PlanError` for a package or feed that is missing."""
    roles = tuple(machine_roles)
    problems: list[tuple[str, str]] = []
    planned = [
        _plan_step(index, step, packages, feeds, problems)
        for index, step in enumerate(steps)
        if any(role in roles for role in step.roles)
    ]
    if problems:
        raise PlanError(problems)
    return Plan(
        task_id=task_id,
        kind=kind,
        project_name=project_name,
        release_version=release_version,
        environment_name=environment,
        machine_name=machine_name,
        steps=tuple(planned),
        variables=resolve_variables(variables, environment, roles, machine_name),
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
    if step.package is not None:
        if package_dir is None:
            raise PlanError([(f"steps[{step.index}].package", "has no extracted directory")])
        env["PACKAGE_DIR"] = package_dir
    return env


# --- decoding -------------------------------------------------------------------------


def _read_plan(reader: FieldReader, value: object) -> Plan | None:
    """The whole plan, or None when it has problems (recorded)."""
    obj = reader.obj(value, "", _PLAN_FIELDS)
    if obj is None:
        return None
    task_id = reader.text(obj, "taskId", "")
    kind = reader.text(obj, "kind", "", choices=KINDS)
    project = reader.text(obj, "projectName", "")
    release = reader.text(obj, "releaseVersion", "", allow_empty=True)
    environment = reader.text(obj, "environmentName", "")
    machine = reader.text(obj, "machineName", "")
    steps = _read_steps(reader, obj)
    variables = _read_variables(reader, obj)
    if kind == "deployment" and release == "":
        reader.problem("releaseVersion", "must be a non-empty string in a deployment")
    names = (task_id, kind, project, release, environment, machine)
    if reader.problems or None in names:
        return None
    return Plan(
        task_id=cast(str, task_id),
        kind=cast(Kind, kind),
        project_name=cast(str, project),
        release_version=cast(str, release),
        environment_name=cast(str, environment),
        machine_name=cast(str, machine),
        steps=steps,
        variables=variables,
    )


def _read_steps(reader: FieldReader, obj: Mapping[str, object]) -> tuple[PlannedStep, ...]:
    """The valid steps; their indices must increase, as in the process."""
    steps: list[PlannedStep] = []
    for path, value in reader.items(obj, "steps", "", max_items=MAX_STEPS) or []:
        step = _read_step(reader, value, path)
        if step is None:
            continue
        if steps and step.index <= steps[-1].index:
            reader.problem(key_path(path, "index"), "must be greater than the previous step's")
        steps.append(step)
    return tuple(steps)


def _read_step(reader: FieldReader, value: object, path: str) -> PlannedStep | None:
    """One planned step, or None when it has problems (recorded)."""
    obj = reader.obj(value, path, _STEP_FIELDS)
    if obj is None:
        return None
    before = len(reader.problems)
    index = reader.integer(obj, "index", path, low=0, high=MAX_STEPS - 1)
    name = reader.text(obj, "name", path)
    phase = reader.text(obj, "phase", path, choices=PHASES)
    script = read_script(reader, obj, path)
    package = _read_package(reader, obj, path)
    timeout = reader.integer(obj, "timeoutSeconds", path, low=1, high=MAX_TIMEOUT)
    if obj.get("script") is None and obj.get("package") is None:
        reader.problem(path, "needs a script, a package or both")
    if phase == "preAcquisition" and obj.get("package") is not None:
        reader.problem(key_path(path, "package"), "not allowed in a preAcquisition step")
    if len(reader.problems) > before or index is None or name is None or timeout is None:
        return None
    return PlannedStep(
        index=index,
        name=name,
        phase=cast(Phase, phase),
        script=script,
        package=package,
        timeout_seconds=timeout,
    )


def _read_package(reader: FieldReader, obj: Mapping[str, object], path: str) -> PlannedPackage | None:
    """A step's planned package, or None when absent or invalid (recorded)."""
    if obj.get("package") is None:
        return None
    path = key_path(path, "package")
    package = reader.obj(obj["package"], path, _PACKAGE_FIELDS)
    if package is None:
        return None
    before = len(reader.problems)
    package_id = read_package_id(reader, package, path)
    version = reader.text(package, "version", path)
    sha512 = reader.text(package, "sha512", path)
    if sha512 is not None and not _SHA512.match(sha512):
        reader.problem(key_path(path, "sha512"), "must be 128 lowercase hex digits")
    size = reader.integer(package, "size", path, low=0, high=MAX_SIZE)
    file_name = _read_file_name(reader, package, path)
    feed = reader.text(package, "feed", path)
    acquisition = reader.text(package, "acquisition", path, choices=ACQUISITIONS)
    mirrors = _read_mirrors(reader, package, path)
    fields = (package_id, version, sha512, size, file_name, feed, acquisition, mirrors)
    if len(reader.problems) > before or None in fields:
        return None
    return PlannedPackage(
        id=cast(str, package_id),
        version=cast(str, version),
        sha512=cast(str, sha512),
        size=cast(int, size),
        file_name=cast(str, file_name),
        feed=cast(str, feed),
        acquisition=cast(Acquisition, acquisition),
        mirrors=cast(tuple[str, ...], mirrors),
    )


def _read_file_name(reader: FieldReader, obj: Mapping[str, object], path: str) -> str | None:
    """A package file name: one plain path component, since the tentacle writes it."""
    name = reader.text(obj, "fileName", path)
    if name is not None and ("/" in name or "\\" in name or name in (".", "..")):
        reader.problem(key_path(path, "fileName"), "must be a plain file name")
        return None
    return name


def _read_mirrors(reader: FieldReader, obj: Mapping[str, object], path: str) -> tuple[str, ...] | None:
    """The ordered mirror candidates (service index URLs)."""
    items = reader.items(obj, "mirrors", path, max_items=100)
    if items is None:
        return None
    urls = [reader.check_text(url, item_path, max_chars=MAX_URL) for item_path, url in items]
    return None if None in urls else tuple(cast(list[str], urls))


def _read_variables(reader: FieldReader, obj: Mapping[str, object]) -> tuple[ResolvedVariable, ...]:
    """The resolved variables; names are unique in a plan."""
    variables: list[ResolvedVariable] = []
    seen: set[str] = set()
    for path, value in reader.items(obj, "variables", "", max_items=MAX_VARIABLES) or []:
        variable = _read_variable(reader, value, path)
        if variable is not None and variable.name in seen:
            reader.problem(key_path(path, "name"), "duplicate variable name")
        elif variable is not None:
            seen.add(variable.name)
            variables.append(variable)
    return tuple(variables)


def _read_variable(reader: FieldReader, value: object, path: str) -> ResolvedVariable | None:
    """One resolved variable, or None when it has problems (recorded)."""
    obj = reader.obj(value, path, ("name", "value", "sensitive"))
    if obj is None:
        return None
    name = reader.text(obj, "name", path)
    text = reader.text(
        obj, "value", path, allow_empty=True, max_chars=MAX_VALUE_BYTES, max_bytes=MAX_VALUE_BYTES
    )
    sensitive = reader.flag(obj, "sensitive", path)
    if name is None or text is None or sensitive is None:
        return None
    return ResolvedVariable(name, text, sensitive)
