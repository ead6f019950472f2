"""A project's deployment process: the JSON document, validated into frozen dataclasses.

`parse_process` takes the decoded document (see design.md, "The process document")
and either returns a `Process` or raises `ProcessError` listing every problem with
its path (``steps[1].roles: must be a non-empty list``). Unknown fields are problems
too, so a misspelt ``scirpt`` never silently drops a script. `Process.to_json` gives
the normalized document back (defaults spelled out), which parses to an equal value.

Rules beyond the shape: a step has a script, a package or both; a preAcquisition
step has no package (packages are acquired after that phase); step names are unique
within the process and within each runbook.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, cast

from tentacle.protocol.documents import DocumentError, key_path
from tentacle.protocol.json_fields import FieldReader

Phase = Literal["preAcquisition", "deployment"]
Syntax = Literal["bash", "sh", "python3"]
Acquisition = Literal["push", "pull"]

PHASES: Final = ("preAcquisition", "deployment")
SYNTAXES: Final = ("bash", "sh", "python3")
ACQUISITIONS: Final = ("push", "pull")
BUILTIN_FEED: Final = "builtin"

MAX_STEPS: Final = 500
MAX_RUNBOOKS: Final = 500
MAX_VARIABLES: Final = 5000
MAX_SCRIPT_BYTES: Final = 1024 * 1024
MAX_VALUE_BYTES: Final = 1024 * 1024
MAX_PACKAGE_ID: Final = 100  # NuGet's own limit
DEFAULT_TIMEOUT: Final = 3600
MAX_TIMEOUT: Final = 86400

# NuGet ids: letters, digits, '.', '_', '-'; they also become file names, so no '/'.
_PACKAGE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

_TOP_FIELDS: Final = ("name", "steps", "runbooks", "variables")
_STEP_FIELDS: Final = ("name", "phase", "roles", "script", "package", "timeoutSeconds")
_VARIABLE_FIELDS: Final = ("name", "value", "environments", "roles", "machines", "sensitive")


class ProcessError(DocumentError):
    """The process document is invalid; ``problems`` lists every ``(path, message)``."""


@dataclass(frozen=True)
class Script:
    """A script body and the interpreter that runs it."""

    syntax: Syntax
    body: str

    def to_json(self) -> dict[str, Any]:
        """The document form."""
        return {"syntax": self.syntax, "body": self.body}


@dataclass(frozen=True)
class PackageUse:
    """A package a step needs: its id, the feed it comes from, and how it travels."""

    id: str
    feed: str = BUILTIN_FEED
    acquisition: Acquisition = "push"

    def to_json(self) -> dict[str, Any]:
        """The document form."""
        return {"id": self.id, "feed": self.feed, "acquisition": self.acquisition}


@dataclass(frozen=True, kw_only=True)
class Step:
    """One step of a process or runbook, run on every target that has one of its roles."""

    name: str
    phase: Phase = "deployment"
    roles: tuple[str, ...]
    script: Script | None = None
    package: PackageUse | None = None
    timeout_seconds: int = DEFAULT_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        """The document form, defaults spelled out."""
        body: dict[str, Any] = {"name": self.name, "phase": self.phase, "roles": list(self.roles)}
        if self.script is not None:
            body["script"] = self.script.to_json()
        if self.package is not None:
            body["package"] = self.package.to_json()
        body["timeoutSeconds"] = self.timeout_seconds
        return body


@dataclass(frozen=True)
class Runbook:
    """A named list of steps run on demand, outside releases."""

    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class Variable:
    """One value of a variable, with the scopes it applies to (empty = everywhere)."""

    name: str
    value: str = field(repr=False)  # sensitive values must not reach logs via repr
    environments: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    machines: tuple[str, ...] = ()
    sensitive: bool = False

    def specificity(self, environment: str, roles: tuple[str, ...], machine: str) -> int | None:
        """How many scopes match, or None when some scope excludes this target."""
        if self.environments and environment not in self.environments:
            return None
        if self.roles and not any(role in self.roles for role in roles):
            return None
        if self.machines and machine not in self.machines:
            return None
        return sum(1 for scope in (self.environments, self.roles, self.machines) if scope)

    def to_json(self) -> dict[str, Any]:
        """The document form."""
        return {
            "name": self.name,
            "value": self.value,
            "environments": list(self.environments),
            "roles": list(self.roles),
            "machines": list(self.machines),
            "sensitive": self.sensitive,
        }


@dataclass(frozen=True)
class Process:
    """A project's validated process: steps, runbooks and variables."""

    name: str
    steps: tuple[Step, ...]
    runbooks: Mapping[str, Runbook] = field(default_factory=lambda: MappingProxyType({}))
    variables: tuple[Variable, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The normalized document; `parse_process` of it gives an equal `Process`."""
        return {
            "name": self.name,
            "steps": [step.to_json() for step in self.steps],
            "runbooks": {
                name: {"steps": [step.to_json() for step in runbook.steps]}
                for name, runbook in self.runbooks.items()
            },
            "variables": [variable.to_json() for variable in self.variables],
        }

    def package_ids(self) -> set[str]:
        """Every package id used by a step of the process or of a runbook."""
        steps = [*self.steps, *(s for rb in self.runbooks.values() for s in rb.steps)]
        return {step.package.id for step in steps if step.package is not None}


def parse_process(doc: object, name: str | None = None) -> Process:
    """Validate a decoded process document; ``name`` is the project name from the URL.

    Raises `ProcessError` with every problem found.
    """
    reader = FieldReader()
    obj = reader.obj(doc, "", _TOP_FIELDS)
    if obj is None:
        raise ProcessError(reader.problems)
    process = Process(
        name=_read_name(reader, obj, name),
        steps=_read_steps(reader, obj, "", non_empty=False),
        runbooks=_read_runbooks(reader, obj),
        variables=_read_variables(reader, obj),
    )
    reader.raise_if_any(ProcessError)
    return process


def _read_name(reader: FieldReader, obj: Mapping[str, object], name: str | None) -> str:
    """The project name: from the document, or from the caller, which it must match."""
    if name is None:
        return reader.text(obj, "name", "") or ""
    given = reader.text(obj, "name", "", default=name)
    if given is not None and given != name:
        reader.problem("name", f"must match the project name {name!r}")
    return reader.check_text(name, "name") or ""


def _read_steps(
    reader: FieldReader, obj: Mapping[str, object], path: str, *, non_empty: bool
) -> tuple[Step, ...]:
    """The valid steps of ``obj["steps"]``; problems of the others are recorded."""
    items = reader.items(obj, "steps", path, max_items=MAX_STEPS, non_empty=non_empty) or []
    _check_unique_names(reader, items)
    steps = (_read_step(reader, value, item_path) for item_path, value in items)
    return tuple(step for step in steps if step is not None)


def _check_unique_names(reader: FieldReader, items: list[tuple[str, object]]) -> None:
    """Record a problem for every step whose name an earlier step already has."""
    first: dict[str, str] = {}
    for item_path, value in items:
        name = value.get("name") if isinstance(value, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            reader.problem(key_path(item_path, "name"), f"duplicate step name (see {first[name]})")
        else:
            first[name] = item_path


def _read_step(reader: FieldReader, value: object, path: str) -> Step | None:
    """One step, or None when it has problems (recorded)."""
    obj = reader.obj(value, path, _STEP_FIELDS)
    if obj is None:
        return None
    before = len(reader.problems)
    name = reader.text(obj, "name", path)
    phase = reader.text(obj, "phase", path, default="deployment", choices=PHASES)
    roles = reader.texts(obj, "roles", path, non_empty=True)
    script = read_script(reader, obj, path)
    package = _read_package(reader, obj, path)
    timeout = reader.integer(obj, "timeoutSeconds", path, low=1, high=MAX_TIMEOUT, default=DEFAULT_TIMEOUT)
    _check_step_rules(reader, obj, path, phase)
    if len(reader.problems) > before or name is None or roles is None or timeout is None:
        return None
    return Step(
        name=name,
        phase=cast(Phase, phase),
        roles=roles,
        script=script,
        package=package,
        timeout_seconds=timeout,
    )


def _check_step_rules(reader: FieldReader, obj: Mapping[str, object], path: str, phase: str | None) -> None:
    """The rules that tie a step's fields together."""
    if obj.get("script") is None and obj.get("package") is None:
        reader.problem(path, "needs a script, a package or both")
    if phase == "preAcquisition" and obj.get("package") is not None:
        reader.problem(key_path(path, "package"), "not allowed in a preAcquisition step")


def read_script(reader: FieldReader, obj: Mapping[str, object], path: str) -> Script | None:
    """``obj["script"]``, or None when absent or invalid (recorded in ``reader``)."""
    if obj.get("script") is None:
        return None
    script_path = key_path(path, "script")
    script = reader.obj(obj["script"], script_path, ("syntax", "body"))
    if script is None:
        return None
    syntax = reader.text(script, "syntax", script_path, choices=SYNTAXES)
    body = reader.text(script, "body", script_path, max_chars=MAX_SCRIPT_BYTES, max_bytes=MAX_SCRIPT_BYTES)
    if syntax is None or body is None:
        return None
    return Script(cast(Syntax, syntax), body)


def _read_package(reader: FieldReader, obj: Mapping[str, object], path: str) -> PackageUse | None:
    """The step's package, or None when absent or invalid (recorded)."""
    if obj.get("package") is None:
        return None
    package_path = key_path(path, "package")
    package = reader.obj(obj["package"], package_path, ("id", "feed", "acquisition"))
    if package is None:
        return None
    package_id = read_package_id(reader, package, package_path)
    feed = reader.text(package, "feed", package_path, default=BUILTIN_FEED)
    acquisition = reader.text(package, "acquisition", package_path, default="push", choices=ACQUISITIONS)
    if package_id is None or feed is None or acquisition is None:
        return None
    return PackageUse(package_id, feed, cast(Acquisition, acquisition))


def read_package_id(reader: FieldReader, obj: Mapping[str, object], path: str) -> str | None:
    """``obj["id"]`` when it is a valid package id, else None (recorded in ``reader``)."""
    package_id = reader.text(obj, "id", path, max_chars=MAX_PACKAGE_ID)
    if package_id is not None and not _PACKAGE_ID.match(package_id):
        reader.problem(key_path(path, "id"), "must be a package id (letters, digits, '.', '_', '-')")
        return None
    return package_id


def _read_runbooks(reader: FieldReader, obj: Mapping[str, object]) -> Mapping[str, Runbook]:
    """The runbooks, keyed by name; each needs at least one step."""
    runbooks: dict[str, Runbook] = {}
    raw = obj.get("runbooks")
    if raw is None:
        return MappingProxyType(runbooks)
    books = reader.obj(raw, "runbooks", None)
    if books is not None and len(books) > MAX_RUNBOOKS:
        reader.problem("runbooks", f"must have at most {MAX_RUNBOOKS} runbooks")
        books = None
    for name, value in (books or {}).items():
        path = key_path("runbooks", name) if isinstance(name, str) else "runbooks"
        if reader.check_text(name, path) is None:
            continue
        body = reader.obj(value, path, ("steps",))
        if body is not None:
            runbooks[name] = Runbook(name, _read_steps(reader, body, path, non_empty=True))
    return MappingProxyType(runbooks)


def _read_variables(reader: FieldReader, obj: Mapping[str, object]) -> tuple[Variable, ...]:
    """The valid variables; problems of the others are recorded."""
    items = reader.items(obj, "variables", "", max_items=MAX_VARIABLES) or []
    variables = (_read_variable(reader, value, path) for path, value in items)
    return tuple(variable for variable in variables if variable is not None)


def _read_variable(reader: FieldReader, value: object, path: str) -> Variable | None:
    """One variable value with its scopes, or None when it has problems (recorded)."""
    obj = reader.obj(value, path, _VARIABLE_FIELDS)
    if obj is None:
        return None
    name = reader.text(obj, "name", path)
    text = reader.text(
        obj, "value", path, allow_empty=True, max_chars=MAX_VALUE_BYTES, max_bytes=MAX_VALUE_BYTES
    )
    environments = reader.texts(obj, "environments", path)
    roles = reader.texts(obj, "roles", path)
    machines = reader.texts(obj, "machines", path)
    sensitive = reader.flag(obj, "sensitive", path, default=False)
    scopes = (environments, roles, machines)
    if name is None or text is None or sensitive is None or None in scopes:
        return None
    return Variable(
        name=name,
        value=text,
        environments=environments or (),
        roles=roles or (),
        machines=machines or (),
        sensitive=sensitive,
    )
