"""A project's deployment process: the JSON document (design.md) as typed msgspec structs.

`parse_process` takes the decoded document and either returns a `Process` or raises
`ProcessError` naming the path of what is wrong (``steps[1].roles: expected a list of
length >= 1``). msgspec checks the shape as it converts: types, required fields,
bounds (names of 1-200 characters, at most 500 steps, scripts of at most 1 MiB, ...)
and unknown fields, so a misspelt ``scirpt`` never silently drops a script. It stops
at the first such problem. `Process.to_json` gives the normalized document back
(defaults spelled out), which parses to an equal value.

Rules beyond the shape, checked after decoding and reported together: a step has a
script, a package or both; a preAcquisition step has no package (packages are
acquired after that phase); step names are unique within the process and within
each runbook; a script body and a variable value take at most 1 MiB in UTF-8; the
document's name is the project's (the URL's) name; channel names are unique, their
rules name packages the process uses, with valid ranges and patterns; a version
template makes NuGet versions (tentacle.protocol.channel_rules).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Final, Literal, Protocol

import msgspec

from tentacle.protocol.channel_rules import Channels, Template, channel_problems, template_problem
from tentacle.protocol.documents import (
    PACKAGE_ID,
    TEXT,
    DocumentError,
    Name,
    Names,
    convert_document,
    json_values,
    key_path,
    over_bytes,
    problem_of,
    text_problem,
)
from tentacle.protocol.wire import Wire

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

# Lengths count characters; the UTF-8 byte limits are checked after decoding.
ScriptBody = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SCRIPT_BYTES, pattern=TEXT)]
Value = Annotated[str, msgspec.Meta(max_length=MAX_VALUE_BYTES, pattern=TEXT)]
PackageId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PACKAGE_ID, pattern=PACKAGE_ID)]
Timeout = Annotated[int, msgspec.Meta(ge=1, le=MAX_TIMEOUT)]
Roles = Annotated[tuple[Name, ...], msgspec.Meta(min_length=1, max_length=1000)]


class ProcessError(DocumentError):
    """The process document is invalid; ``problems`` lists each ``(path, message)``."""


class Script(Wire, frozen=True, kw_only=False):
    """A script body and the interpreter that runs it."""

    syntax: Syntax
    body: ScriptBody


class PackageUse(Wire, frozen=True, kw_only=False):
    """A package a step needs: its id, the feed it comes from, and how it travels."""

    id: PackageId
    feed: Name = BUILTIN_FEED
    acquisition: Acquisition = "push"


class Step(Wire, frozen=True, kw_only=True):
    """One step of a process or runbook, run on every target that has one of its roles."""

    name: Name
    phase: Phase = "deployment"
    roles: Roles
    script: Script | None = None
    package: PackageUse | None = None
    timeout_seconds: Timeout = DEFAULT_TIMEOUT


Steps = Annotated[tuple[Step, ...], msgspec.Meta(max_length=MAX_STEPS)]


class Runbook(Wire, frozen=True, kw_only=False):
    """A list of steps run on demand, outside releases (its name is its key in ``runbooks``)."""

    steps: Annotated[tuple[Step, ...], msgspec.Meta(min_length=1, max_length=MAX_STEPS)]


class Variable(Wire, frozen=True, kw_only=True):
    """One value of a variable, with the scopes it applies to (empty = everywhere)."""

    name: Name
    value: Value
    environments: Names = ()
    roles: Names = ()
    machines: Names = ()
    sensitive: bool = False

    def __repr__(self) -> str:
        """Without the value: a sensitive one must not reach a log through a repr."""
        return f"Variable(name={self.name!r}, sensitive={self.sensitive!r})"

    def specificity(self, environment: str, roles: tuple[str, ...], machine: str) -> int | None:
        """How many scopes match, or None when some scope excludes this target."""
        if self.environments and environment not in self.environments:
            return None
        if self.roles and not any(role in self.roles for role in roles):
            return None
        if self.machines and machine not in self.machines:
            return None
        return sum(1 for scope in (self.environments, self.roles, self.machines) if scope)


class Process(Wire, frozen=True, kw_only=False):
    """A project's validated process: steps, runbooks (by name), variables, channels."""

    name: Name
    steps: Steps = ()
    runbooks: Annotated[dict[Name, Runbook], msgspec.Meta(max_length=MAX_RUNBOOKS)] = {}
    variables: Annotated[tuple[Variable, ...], msgspec.Meta(max_length=MAX_VARIABLES)] = ()
    channels: Channels = ()
    version_template: Template | None = None

    def to_json(self) -> dict[str, Any]:
        """The normalized document (camelCase); `parse_process` of it gives an equal `Process`."""
        return json_values(self)

    def package_ids(self) -> set[str]:
        """Every package id used by a step of the process or of a runbook."""
        steps = [*self.steps, *(s for rb in self.runbooks.values() for s in rb.steps)]
        return {step.package.id for step in steps if step.package is not None}


def parse_process(doc: object, name: str | None = None) -> Process:
    """Decode and check a process document; ``name`` is the project name from the URL.

    A document without a name takes ``name``; one with another name is refused.
    Raises `ProcessError`: the first problem of shape, or every broken rule.
    """
    if name is not None and isinstance(doc, dict) and "name" not in doc:
        doc = {**doc, "name": name}
    try:
        process = convert_document(doc, Process, ProcessError)
    except ProcessError as exc:
        named = _in_runbook(doc, exc)
        if named is None:
            raise
        raise named from exc.__cause__
    problems = list(rule_problems(process))
    if name is not None and process.name != name:
        problems.insert(0, ("name", f"must match the project name {name!r}"))
    if problems:
        raise ProcessError(problems)
    return process


def rule_problems(process: Process) -> Iterator[tuple[str, str]]:
    """Every broken rule that the structs cannot say, with its path."""
    yield from step_problems(process.steps, "steps")
    for book, runbook in process.runbooks.items():
        yield from step_problems(runbook.steps, key_path("runbooks", book) + ".steps")
    for index, variable in enumerate(process.variables):
        if over_bytes(variable.value, MAX_VALUE_BYTES):
            yield f"variables[{index}].value", f"must be at most {MAX_VALUE_BYTES} bytes in UTF-8"
    yield from channel_problems(process.channels, process.package_ids(), "channels")
    if process.version_template is not None:
        problem = template_problem(process.version_template)
        if problem is not None:
            yield "versionTemplate", problem


def step_problems(steps: Sequence[Step], path: str) -> Iterator[tuple[str, str]]:
    """The rules of each step, and unique names among ``steps`` (at ``path``)."""
    first: dict[str, str] = {}
    for index, step in enumerate(steps):
        step_path = f"{path}[{index}]"
        if step.name in first:
            yield f"{step_path}.name", f"duplicate step name (see {first[step.name]})"
        first.setdefault(step.name, step_path)
        yield from step_rule_problems(step, step_path)


class StepShape(Protocol):
    """What the step rules read: a process's `Step` and a plan's step both have it."""

    @property
    def phase(self) -> Phase:
        """When the step runs."""

    @property
    def script(self) -> Script | None:
        """Its script, if any."""

    @property
    def package(self) -> object | None:
        """Its package, if any."""


def step_rule_problems(step: StepShape, path: str) -> Iterator[tuple[str, str]]:
    """The rules that tie one step's fields together (a process step or a planned one)."""
    if step.script is None and step.package is None:
        yield path, "needs a script, a package or both"
    if step.phase == "preAcquisition" and step.package is not None:
        yield f"{path}.package", "not allowed in a preAcquisition step"
    if step.script is not None and over_bytes(step.script.body, MAX_SCRIPT_BYTES):
        yield f"{path}.script.body", f"must be at most {MAX_SCRIPT_BYTES} bytes in UTF-8"


def _in_runbook(doc: object, error: ProcessError) -> ProcessError | None:
    """The problem of a runbook with its key in the path (msgspec says ``runbooks[...]``)."""
    path, what = error.problems[0]
    runbooks = doc.get("runbooks") if isinstance(doc, dict) else None
    about_a_runbook = path.startswith("runbooks[...]") or (path == "runbooks" and what.endswith("as a key"))
    if not about_a_runbook or not isinstance(runbooks, dict):
        return None
    for book, value in runbooks.items():
        for item, kind in ((book, Name), (value, Runbook)):
            try:
                msgspec.convert(item, type=kind)
            except msgspec.ValidationError as exc:
                return ProcessError([_runbook_problem(book, *problem_of(exc, kind))])
    return None


def _runbook_problem(book: object, inner: str, what: str) -> tuple[str, str]:
    """``(path, message)`` of a problem at ``inner`` in runbook ``book`` (or in its name)."""
    if not isinstance(book, str) or text_problem(book) is not None:
        return "runbooks", f"a key {what}"  # a name that could not be shown in a path
    book_path = key_path("runbooks", book)
    return (book_path, what) if inner == "document" else (f"{book_path}.{inner}", what)
