"""The task routes: start deployments and runbook runs, read, follow and cancel tasks.

POST /api/{space}/deployments/create/untenanted/v1  {projectName, releaseVersion, environmentNames,
                                                     machineNames?, and the options below}
POST /api/{space}/runbook-runs/create/v1            {projectName, runbookName, environmentNames,
                                                     machineNames?, and the options below}
GET  /api/{space}/tasks/{taskId}/v1                 state, targets, error
GET  /api/{space}/tasks/{taskId}/log/v1?since=SEQ   log lines after SEQ (and the task state)
POST /api/{space}/tasks/{taskId}/cancel/v1

Each create is one request that returns ``{taskId}``: the task is resolved and stored
in one transaction (nothing is stored when anything is wrong), then queued. A deployment
also takes ``specificMachineNames`` (``machineNames`` is the older name for it),
``excludedMachineNames``, ``skipStepNames``, ``forcePackageRedeployment``, ``runAt`` and
``noRunAfter`` (see `options`), and so does a runbook run; the tenanted route is in
tenant_routes. The Octopus-shaped bodies of the same paths are octopus_routes' (it calls
`start_deployment` and `start_runbook_run`, the work of these routes).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from aiohttp import web
from msgspec import UNSET

from server_shim.api.bodies import (
    CancelAnswer,
    DeploymentOptions,
    DeploymentRequest,
    RunbookRunRequest,
    TargetView,
    TaskCreated,
    TaskView,
)
from server_shim.api.middleware import API_KEY_NAME, DB, answer, read_body
from server_shim.api.space_routes import space_of
from server_shim.dispatch.dispatcher import Dispatcher
from server_shim.dispatch.timetable import iso
from server_shim.store import deployments, list_rows
from server_shim.store import task_rows as tasks
from tentacle.errors import Conflict, InvalidInput, NotFound
from tentacle.protocol import wire
from tentacle.protocol.coordinator import TaskCoordinator
from tentacle.protocol.states import TaskState

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
MAX_LOG_PAGE = 1000


async def _create(request: web.Request, req: deployments.Request) -> tasks.TaskRecord:
    record = await request.app[DB].run(deployments.create, req)
    await request.app[DISPATCHER].submit(record)
    return record


async def create_deployment(request: web.Request) -> web.Response:
    """Deploy a release to environments: one request, one task."""
    space = await space_of(request)
    record = await start_deployment(request, space, await read_body(request, DeploymentRequest))
    return answer(TaskCreated(task_id=record.task_id), 201)


async def start_deployment(request: web.Request, space: str, body: DeploymentRequest) -> tasks.TaskRecord:
    """Store and queue the task of an untenanted deployment (the route's work, whatever the body's shape)."""
    opts = options(body, body.machine_names)
    req = deployments.Request(
        space=space,
        kind="deployment",
        project=body.project_name,
        release_version=body.release_version,
        runbook=None,
        environments=_distinct(body.environment_names),
        machine_names=opts.specific_machines,
        options=opts,
    )
    return await _create(request, req)


def options(body: DeploymentOptions, machine_names: tuple[str, ...] = ()) -> deployments.Options:
    """The deployment options of a request body (``machineNames`` joins ``specificMachineNames``)."""
    run_at, no_run_after = body.times()
    return deployments.Options(
        specific_machines=_distinct((*body.specific_machine_names, *machine_names)),
        excluded_machines=_distinct(body.excluded_machine_names),
        skip_steps=_distinct(body.skip_step_names),
        force_package_redeployment=body.force_package_redeployment,
        run_at=run_at,
        no_run_after=no_run_after,
    )


async def create_runbook_run(request: web.Request) -> web.Response:
    """Run a project's runbook in environments: one request, one task."""
    space = await space_of(request)
    record = await start_runbook_run(request, space, await read_body(request, RunbookRunRequest))
    return answer(TaskCreated(task_id=record.task_id), 201)


async def start_runbook_run(request: web.Request, space: str, body: RunbookRunRequest) -> tasks.TaskRecord:
    """Store and queue the task of a runbook run (the route's work, whatever the body's shape)."""
    opts = options(body, body.machine_names)
    req = deployments.Request(
        space=space,
        kind="runbook",
        project=body.project_name,
        release_version="",
        runbook=body.runbook_name,
        environments=_distinct(body.environment_names),
        machine_names=opts.specific_machines,
        options=opts,
    )
    return await _create(request, req)


def _distinct(names: tuple[str, ...]) -> tuple[str, ...]:
    """Names in their first order, each once: a repeat asks for nothing more."""
    return tuple(dict.fromkeys(names))


def task_view(record: tasks.TaskRecord, coordinator: TaskCoordinator | None) -> TaskView:
    """The task resource of design.md; each target says why when it failed (``reason``)."""
    coordinator = coordinator or TaskCoordinator.restore(record.coordinator)
    targets = [
        TargetView(machine_name=t.machine_name, phase=t.phase, state=t.state, reason=t.reason or UNSET)
        for t in coordinator.target_states()
    ]
    return TaskView(
        task_id=record.task_id,
        state=TaskState(record.state),
        kind=record.kind,
        project_name=record.project,
        release_version=record.release_version or None,
        runbook_name=record.runbook,
        environment_names=record.environment.split(","),
        created_at=record.created_at,
        finished_at=record.finished_at,
        targets=targets,
        error=record.error or UNSET,
        tenant_name=record.tenant or UNSET,
        run_at=UNSET if record.run_at is None else iso(record.run_at),
        no_run_after=UNSET if record.no_run_after is None else iso(record.no_run_after),
    )


async def _record(request: web.Request) -> tasks.TaskRecord:
    return await stored_task(request, request.match_info["taskId"], await space_of(request))


async def stored_task(request: web.Request, task_id: str, space: str | None) -> tasks.TaskRecord:
    """The task (in `space`, or in any when None), as `as_held` gives it."""
    record = await request.app[DB].run(functools.partial(tasks.get, with_plans=False), task_id)
    if space is not None and record.space != space:
        raise NotFound(f"task {record.task_id!r} does not exist in space {space!r}")
    return as_held(request, record)


def as_held(request: web.Request, record: tasks.TaskRecord) -> tasks.TaskRecord:
    """The task as stored, or as this server holds it when it ended and the disk refused its state."""
    run = request.app[DISPATCHER].live(record.task_id)
    if run is not None and run.unsaved:
        coordinator = run.coordinator
        return dataclasses.replace(record, state=str(coordinator.state), error=coordinator.error)
    return record


async def get_task(request: web.Request) -> web.Response:
    """One task's state and its targets' phases."""
    record = await _record(request)
    run = request.app[DISPATCHER].live(record.task_id)
    return answer(task_view(record, run.coordinator if run else None))


async def get_log(request: web.Request) -> web.Response:
    """Log lines after ``since`` (exclusive), at most 1000, with the task's state."""
    record = await _record(request)
    try:
        since = int(request.query.get("since", "0"))
    except ValueError as exc:
        raise InvalidInput("since: must be an integer", details={"field": "since"}) from exc
    if not -(2**63) <= since < 2**63:  # SQLite's integers are 64-bit: a bigger one would crash the query
        raise InvalidInput("since: must be a 64-bit integer", details={"field": "since"})
    python = request.query.get("render") == "python"
    body = await request.app[DB].run(log_page, record.task_id, since, python)
    head = wire.encode({"taskId": record.task_id, "taskState": record.state})
    return web.Response(body=head[:-1] + b"," + body[1:], content_type="application/json")


def log_page(conn: Any, task_id: str, since: int, python: bool) -> bytes:
    """``nextSince``, ``more``, ``items`` and ``totalCount`` of one log page; the items and count
    as the database wrote them (or, with ``python``, as rows serialized here)."""
    query = list_rows.log_query(task_id, since, MAX_LOG_PAGE)
    build = list_rows.page_python if python else list_rows.page_json
    items = build(conn, list_rows.LOG_FIELDS, query)
    last, count = conn.execute(
        "SELECT MAX(seq), COUNT(*) FROM (SELECT seq FROM task_log WHERE task_id = ? AND seq > ?"
        " ORDER BY seq LIMIT ?) AS page",
        (task_id, since, MAX_LOG_PAGE),
    ).fetchone()
    more = b"true" if count == MAX_LOG_PAGE else b"false"
    return b'{"nextSince":%d,"more":%s,' % (last if last is not None else since, more) + items[1:]


async def cancel_task(request: web.Request) -> web.Response:
    """Cancel a queued or running task."""
    record = await _record(request)
    if record.state in tasks.FINAL_STATES:
        raise Conflict(f"task {record.task_id} already finished ({record.state})")
    state = await cancel_running(request, record)
    return answer(CancelAnswer(task_id=record.task_id, state=state), 202)


async def cancel_running(request: web.Request, record: tasks.TaskRecord) -> str:
    """Cancel a task that has not ended, in the caller's name; the state it is in now."""
    name = request.get(API_KEY_NAME, "an operator")
    return await request.app[DISPATCHER].cancel(record.task_id, f"cancelled by {name}")


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_post("/api/{space}/deployments/create/untenanted/v1", create_deployment)
    app.router.add_post("/api/{space}/runbook-runs/create/v1", create_runbook_run)
    app.router.add_get("/api/{space}/tasks/{taskId}/v1", get_task)
    app.router.add_get("/api/{space}/tasks/{taskId}/log/v1", get_log)
    app.router.add_post("/api/{space}/tasks/{taskId}/cancel/v1", cancel_task)
