"""The task routes: start deployments and runbook runs, read, follow and cancel tasks.

POST /api/{space}/deployments/create/untenanted/v1  {projectName, releaseVersion, environmentNames,
                                                     machineNames?}
POST /api/{space}/runbook-runs/create/v1            {projectName, runbookName, environmentNames,
                                                     machineNames?}
GET  /api/{space}/tasks/{taskId}/v1                 state, targets, error
GET  /api/{space}/tasks/{taskId}/log/v1?since=SEQ   log lines after SEQ (and the task state)
POST /api/{space}/tasks/{taskId}/cancel/v1

Each create is one request that returns ``{taskId}``: the task is resolved and stored
in one transaction (nothing is stored when anything is wrong), then queued.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from server_shim.api.machine_routes import space_of
from server_shim.api.middleware import API_KEY_NAME, DB, field, read_json, string_list
from server_shim.dispatch.dispatcher import Dispatcher
from server_shim.store import deployments
from server_shim.store import task_rows as tasks
from tentacle.errors import Conflict, InvalidInput, NotFound
from tentacle.protocol.coordinator import TaskCoordinator

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
MAX_LOG_PAGE = 1000


def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise InvalidInput(
                f"{key}: unknown field (expected {', '.join(allowed)})", details={"field": key}
            )


def _names(body: dict[str, Any], key: str, required: bool) -> tuple[str, ...]:
    values = string_list(body, key, required=required)
    if required and not values:
        raise InvalidInput(f"{key}: must be a non-empty list", details={"field": key})
    if len(values) > 1000 or any(not v or len(v) > 200 for v in values):
        raise InvalidInput(f"{key}: at most 1000 names of 1-200 characters", details={"field": key})
    return tuple(dict.fromkeys(values))


def _text(body: dict[str, Any], key: str) -> str:
    value = field(body, key, str)
    if not value or len(value) > 200:
        raise InvalidInput(f"{key}: must be 1-200 characters", details={"field": key})
    return str(value)


async def _create(request: web.Request, req: deployments.Request) -> web.Response:
    record = await request.app[DB].run(deployments.create, req)
    await request.app[DISPATCHER].submit(record)
    return web.json_response({"taskId": record.task_id}, status=201)


async def create_deployment(request: web.Request) -> web.Response:
    """Deploy a release to environments: one request, one task."""
    space = await space_of(request)
    body = await read_json(request)
    _only(body, ("projectName", "releaseVersion", "environmentNames", "machineNames"))
    req = deployments.Request(
        space=space,
        kind="deployment",
        project=_text(body, "projectName"),
        release_version=_text(body, "releaseVersion"),
        runbook=None,
        environments=_names(body, "environmentNames", True),
        machine_names=_names(body, "machineNames", False),
    )
    return await _create(request, req)


async def create_runbook_run(request: web.Request) -> web.Response:
    """Run a project's runbook in environments: one request, one task."""
    space = await space_of(request)
    body = await read_json(request)
    _only(body, ("projectName", "runbookName", "environmentNames", "machineNames"))
    req = deployments.Request(
        space=space,
        kind="runbook",
        project=_text(body, "projectName"),
        release_version="",
        runbook=_text(body, "runbookName"),
        environments=_names(body, "environmentNames", True),
        machine_names=_names(body, "machineNames", False),
    )
    return await _create(request, req)


def task_json(record: tasks.TaskRecord, coordinator: TaskCoordinator | None) -> dict[str, Any]:
    """The task resource of design.md."""
    coordinator = coordinator or TaskCoordinator.restore(record.coordinator)
    targets = [
        {"machineName": t.machine_name, "phase": t.phase, "state": t.state}
        for t in coordinator.target_states()
    ]
    body: dict[str, Any] = {
        "taskId": record.task_id,
        "state": record.state,
        "kind": record.kind,
        "projectName": record.project,
        "releaseVersion": record.release_version or None,
        "runbookName": record.runbook,
        "environmentNames": record.environment.split(","),
        "createdAt": record.created_at,
        "finishedAt": record.finished_at,
        "targets": targets,
    }
    if record.error:
        body["error"] = record.error
    return body


async def _record(request: web.Request) -> tasks.TaskRecord:
    space = await space_of(request)
    record = await request.app[DB].run(
        functools.partial(tasks.get, with_plans=False), request.match_info["taskId"]
    )
    if record.space != space:
        raise NotFound(f"task {record.task_id!r} does not exist in space {space!r}")
    return record


async def get_task(request: web.Request) -> web.Response:
    """One task's state and its targets' phases."""
    record = await _record(request)
    run = request.app[DISPATCHER].runs.get(record.task_id)
    return web.json_response(task_json(record, run.coordinator if run else None))


async def get_log(request: web.Request) -> web.Response:
    """Log lines after ``since`` (exclusive), at most 1000, with the task's state."""
    record = await _record(request)
    try:
        since = int(request.query.get("since", "0"))
    except ValueError as exc:
        raise InvalidInput("since: must be an integer", details={"field": "since"}) from exc
    if not -(2**63) <= since < 2**63:  # SQLite's integers are 64-bit: a bigger one would crash the query
        raise InvalidInput("since: must be a 64-bit integer", details={"field": "since"})
    lines = await request.app[DB].run(tasks.read_log, record.task_id, since, MAX_LOG_PAGE)
    return web.json_response(
        {
            "taskId": record.task_id,
            "taskState": record.state,
            "items": lines,
            "nextSince": lines[-1]["seq"] if lines else since,
            "more": len(lines) == MAX_LOG_PAGE,
        }
    )


async def cancel_task(request: web.Request) -> web.Response:
    """Cancel a queued or running task."""
    record = await _record(request)
    if record.state in tasks.FINAL_STATES:
        raise Conflict(f"task {record.task_id} already finished ({record.state})")
    name = request.get(API_KEY_NAME, "an operator")
    state = await request.app[DISPATCHER].cancel(record.task_id, f"cancelled by {name}")
    return web.json_response({"taskId": record.task_id, "state": state}, status=202)


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_post("/api/{space}/deployments/create/untenanted/v1", create_deployment)
    app.router.add_post("/api/{space}/runbook-runs/create/v1", create_runbook_run)
    app.router.add_get("/api/{space}/tasks/{taskId}/v1", get_task)
    app.router.add_get("/api/{space}/tasks/{taskId}/log/v1", get_log)
    app.router.add_post("/api/{space}/tasks/{taskId}/cancel/v1", cancel_task)
