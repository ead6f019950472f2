"""Octopus Deploy's answers, as typed structs (PascalCase), built from this project's records.

Pure: records in, structs out. Ids Octopus gives its resources are derived from ours, so
that nothing new is stored: a server task's id is our task id (``T-1a2b...``), its
deployment ``Deployments-1a2b...`` (``RunbookRuns-`` for a runbook run); a release,
project, environment or tenant is ``Releases-``, ``Projects-``... and a hash of its space
and names (`named_id`). The resources Octopus's actions read after creating are in
octopus_lookups.

Task states, ours to Octopus's::

    queued                              Queued
    running                             Executing (Cancelling once a cancel is asked)
    success                             Success
    failed                              Failed
    cancelled                           Canceled (TimedOut when noRunAfter passed first)
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import msgspec

from server_shim.dispatch import timetable
from server_shim.store.spaces import Space
from server_shim.store.task_rows import TaskRecord
from tentacle.protocol.coordinator import TargetProgress, TaskCoordinator
from tentacle.protocol.states import TargetState, TaskState

T = TypeVar("T")
#: The version `GET /api` claims: the first with the Executions API, which the clients check for.
OCTOPUS_VERSION = "2022.3.5512"
OctopusState = Literal["Queued", "Executing", "Success", "Failed", "Canceled", "Cancelling", "TimedOut"]
_STATES: dict[TaskState, OctopusState] = {
    TaskState.QUEUED: "Queued",
    TaskState.RUNNING: "Executing",
    TaskState.SUCCESS: "Success",
    TaskState.FAILED: "Failed",
    TaskState.CANCELLED: "Canceled",
}
_ACTIVITY = {
    TargetState.WAITING: "Pending",
    TargetState.RUNNING: "Running",
    TargetState.SUCCESS: "Success",
    TargetState.FAILED: "Failed",
    TargetState.CANCELLED: "Canceled",
    TargetState.UNKNOWN: "Failed",
}


class Answer(msgspec.Struct, frozen=True, kw_only=True, rename="pascal"):
    """Base of Octopus's answers: PascalCase keys."""


class RootDocument(Answer, frozen=True, kw_only=True):
    """``GET /api``: what the clients read first (``Version``, ``InstallationId``)."""

    application: str = "Octopus Deploy"
    version: str = OCTOPUS_VERSION
    api_version: str = "3.0.0"
    installation_id: str
    links: dict[str, str]


class SpaceResource(Answer, frozen=True, kw_only=True):
    """A space as ``/api/spaces`` lists it."""

    id: str
    name: str
    description: str = ""
    is_default: bool
    task_queue_stopped: bool = False
    space_managers_teams: list[str] = msgspec.field(default_factory=list)
    space_managers_team_members: list[str] = msgspec.field(default_factory=list)
    links: dict[str, str] = msgspec.field(default_factory=dict)


class Collection(Answer, Generic[T], frozen=True, kw_only=True):
    """One page of a list, as Octopus pages them."""

    item_type: str
    total_results: int
    items_per_page: int
    number_of_pages: int
    last_page_number: int
    items: list[T]


class ReleaseCreated(Answer, frozen=True, kw_only=True):
    """The answer to ``releases/create/v1``."""

    release_id: str
    release_version: str


class DeploymentServerTask(Answer, frozen=True, kw_only=True):
    """One deployment and the server task that runs it."""

    deployment_id: str
    server_task_id: str


class DeploymentsCreated(Answer, frozen=True, kw_only=True):
    """The answer to both ``deployments/create/.../v1``."""

    deployment_server_tasks: list[DeploymentServerTask]


class RunbookRunServerTask(Answer, frozen=True, kw_only=True):
    """One runbook run and the server task that runs it."""

    runbook_run_id: str
    server_task_id: str


class RunbookRunsCreated(Answer, frozen=True, kw_only=True):
    """The answer to ``runbook-runs/create/v1``."""

    runbook_run_server_tasks: list[RunbookRunServerTask]


class ServerTask(Answer, frozen=True, kw_only=True):
    """A task as Octopus shows one (what the clients' waiters poll)."""

    id: str
    space_id: str
    name: str
    description: str
    arguments: dict[str, Any]
    state: OctopusState
    completed: str
    queue_time: str
    queue_time_expiry: str | None
    start_time: str | None
    last_updated_time: str
    completed_time: str | None
    server_node: str = "server-shim"
    duration: str
    error_message: str
    has_been_picked_up_by_processor: bool
    is_completed: bool
    finished_successfully: bool
    has_pending_interruptions: bool = False
    can_rerun: bool = False
    has_warnings_or_errors: bool
    links: dict[str, str]


class ActivityLogElement(Answer, frozen=True, kw_only=True):
    """One log line."""

    category: Literal["Info", "Error"]
    occurred_at: str
    message_text: str


class ActivityElement(Answer, frozen=True, kw_only=True):
    """A node of a task's activity tree: the task, then one per target machine."""

    id: str
    name: str
    started: str | None
    ended: str | None
    status: str
    children: list[ActivityElement]
    show_at_summary_level: bool = True
    log_elements: list[ActivityLogElement]
    progress_percentage: int
    progress_message: str


class TaskProgress(Answer, frozen=True, kw_only=True):
    """How far a task is."""

    progress_percentage: int
    estimated_time_remaining: str = ""


class ServerTaskDetails(Answer, frozen=True, kw_only=True):
    """``GET /api/{space}/tasks/{id}/details``: the task, its progress and its activity logs."""

    task: ServerTask
    progress: TaskProgress
    physical_log_size: int
    activity_logs: list[ActivityElement]


def moment(stamp: float | None) -> str | None:
    """An epoch time as Octopus writes times (ISO 8601 with milliseconds and an offset)."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")


def installation_id(ca_thumbprint: str) -> str:
    """A stable GUID for this installation, from its CA (shared by every node of it)."""
    digest = hashlib.sha256(b"server-shim installation " + ca_thumbprint.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def named_id(kind: str, space: Space, *names: str) -> str:
    """The stable id Octopus's clients see for a thing this server names (``Projects-1a2b3c...``)."""
    digest = hashlib.sha256("\0".join((kind, space.space_id, *names)).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


def release_id(space: Space, project: str, version: str) -> str:
    """The stable id of a release (a release is named by space, project and version here)."""
    return named_id("Releases", space, project, version)


def execution_id(record: TaskRecord) -> str:
    """The deployment's or runbook run's id: the task's, under Octopus's prefix."""
    prefix = "RunbookRuns-" if record.kind == "runbook" else "Deployments-"
    return prefix + record.task_id.removeprefix("T-")


def space_resource(space: Space) -> SpaceResource:
    """A space as Octopus shows one."""
    return SpaceResource(
        id=space.space_id,
        name=space.name,
        is_default=space.space_id == "Spaces-1",
        links={"Self": f"/api/spaces/{space.space_id}"},
    )


def page_of(item_type: str, items: list[T], total: int, take: int) -> Collection[T]:
    """A page of `items` out of `total`, `take` at most per page."""
    per_page = max(take, 1)
    pages = max(math.ceil(total / per_page), 1)
    return Collection(
        item_type=item_type,
        total_results=total,
        items_per_page=per_page,
        number_of_pages=pages,
        last_page_number=pages - 1,
        items=items,
    )


def state_of(record: TaskRecord, coordinator: TaskCoordinator) -> OctopusState:
    """The task's state in Octopus's words (see the table above)."""
    state = TaskState(record.state)
    if state == TaskState.RUNNING and coordinator.cancelling:
        return "Cancelling"
    expired = record.no_run_after is not None and record.error == timetable.expiry_reason(record)
    if state == TaskState.CANCELLED and expired:
        return "TimedOut"
    return _STATES[state]


def server_task(record: TaskRecord, coordinator: TaskCoordinator, space: Space) -> ServerTask:
    """The Octopus view of one task."""
    state = state_of(record, coordinator)
    base = f"/api/{space.space_id}/tasks/{record.task_id}"
    ended = record.finished_at
    return ServerTask(
        id=record.task_id,
        space_id=space.space_id,
        name="RunbookRun" if record.kind == "runbook" else "Deploy",
        description=description(record),
        arguments=_arguments(record, space),
        state=state,
        completed=_completed(record, ended),
        queue_time=moment(record.created_at) or "",
        queue_time_expiry=moment(record.no_run_after),
        start_time=None,
        last_updated_time=moment(ended or time.time()) or "",
        completed_time=moment(ended),
        duration=_duration((ended or time.time()) - record.created_at),
        error_message=record.error or "",
        has_been_picked_up_by_processor=state != "Queued",
        is_completed=state in ("Success", "Failed", "Canceled", "TimedOut"),
        finished_successfully=state == "Success",
        has_warnings_or_errors=state in ("Failed", "TimedOut"),
        links={
            "Self": base,
            "Details": f"{base}/details",
            "Raw": f"{base}/raw",
            "Cancel": f"/api/tasks/{record.task_id}/cancel",
        },
    )


def description(record: TaskRecord) -> str:
    """What the task does, in a line."""
    where = record.environment.replace(",", ", ")
    if record.kind == "runbook":
        return f"Run runbook {record.runbook} of {record.project} in {where}"
    tenant = f" for {record.tenant}" if record.tenant else ""
    return f"Deploy {record.project} release {record.release_version} to {where}{tenant}"


def _arguments(record: TaskRecord, space: Space) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "SpaceId": space.space_id,
        "ProjectName": record.project,
        "EnvironmentNames": record.environment.split(","),
        ("RunbookRunId" if record.kind == "runbook" else "DeploymentId"): execution_id(record),
    }
    if record.kind == "runbook":
        arguments["RunbookName"] = record.runbook
    else:
        arguments["ReleaseVersion"] = record.release_version
    if record.tenant:
        arguments["TenantName"] = record.tenant
    return arguments


def _completed(record: TaskRecord, ended: float | None) -> str:
    if ended is None:
        return ""
    return time.strftime("%A, %d %B %Y %H:%M:%S UTC", time.gmtime(ended))


def _duration(seconds: float) -> str:
    """A duration as Octopus words one (``3 seconds``, ``2 minutes``, ``1 hour``)."""
    seconds = max(seconds, 0.0)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = int(seconds)
    return f"{count} second{'s' if count != 1 else ''}"


def details(
    task: ServerTask, record: TaskRecord, targets: list[TargetProgress], lines: list[dict[str, Any]]
) -> ServerTaskDetails:
    """The task with its activity tree: one child per target machine, holding that machine's lines."""
    by_machine: dict[str, list[ActivityLogElement]] = {t.machine_name: [] for t in targets}
    size = 0
    for line in lines:
        size += len(line["text"]) + 1
        element = ActivityLogElement(
            category="Error" if line["stream"] == "stderr" else "Info",
            occurred_at=moment(line["time"]) or "",
            message_text=line["text"],
        )
        by_machine.setdefault(line["machineName"], []).append(element)
    done = sum(1 for t in targets if t.state not in (TargetState.WAITING, TargetState.RUNNING))
    percent = 100 if task.is_completed else int(100 * done / max(len(targets), 1))
    children = [_machine_activity(record, t, by_machine.get(t.machine_name, [])) for t in targets]
    root = ActivityElement(
        id=f"{record.task_id}/root",
        name=task.description,
        started=task.queue_time,
        ended=task.completed_time,
        status=_root_status(task.state),
        children=children,
        log_elements=[],
        progress_percentage=percent,
        progress_message=task.error_message,
    )
    return ServerTaskDetails(
        task=task,
        progress=TaskProgress(progress_percentage=percent),
        physical_log_size=size,
        activity_logs=[root],
    )


def _machine_activity(
    record: TaskRecord, target: TargetProgress, lines: list[ActivityLogElement]
) -> ActivityElement:
    finished = target.state not in (TargetState.WAITING, TargetState.RUNNING)
    return ActivityElement(
        id=f"{record.task_id}/{target.machine_name}",
        name=target.machine_name,
        started=lines[0].occurred_at if lines else None,
        ended=(lines[-1].occurred_at if lines else None) if finished else None,
        status=_ACTIVITY[target.state],
        children=[],
        log_elements=lines,
        progress_percentage=100 if finished else 0,
        progress_message=target.reason or target.phase,
    )


def _root_status(state: OctopusState) -> str:
    return {
        "Queued": "Pending",
        "Executing": "Running",
        "Cancelling": "Running",
        "Success": "Success",
        "Failed": "Failed",
        "TimedOut": "Failed",
        "Canceled": "Canceled",
    }[state]
