"""The task routes Octopus's clients poll and cancel with, over this project's tasks.

GET  /api/{space}/tasks?ids=A,B&skip&take   {Items: [ServerTask]} (ids of no task are left out)
GET  /api/{space}/tasks/{id}                one ServerTask: State, IsCompleted, ErrorMessage, ...
GET  /api/{space}/tasks/{id}/details        the task, its progress, one activity per machine
GET  /api/{space}/tasks/{id}/raw            the log as text
POST /api/{space}/tasks/{id}/cancel         cancel; answers the task (an ended one as it is)

and each of the four single-task routes without the space (``/api/tasks/{id}...``), as
Octopus has them. Tasks are read and cancelled through task_routes (`stored_task`,
`cancel_running`), as our own routes do; octopus_answers words them as Octopus does.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from server_shim.api import octopus_answers as shapes_out
from server_shim.api.middleware import DB, answer
from server_shim.api.octopus_routes import paging, query_of
from server_shim.api.space_routes import find_space, route_space
from server_shim.api.task_routes import DISPATCHER, as_held, cancel_running, stored_task
from server_shim.store import task_rows as tasks
from server_shim.store.spaces import Space
from server_shim.store.task_rows import TaskRecord
from tentacle.errors import InvalidInput
from tentacle.protocol.coordinator import TaskCoordinator

# The most log lines `details` shows (the newest; `raw` gives them all).
MAX_DETAIL_LINES: Final = 10_000
LOG_PAGE: Final = 1000
# A task id of the URL: anything but ``v1`` and the like, which our own list routes take.
TASK_ID: Final = "{taskId:(?!v[0-9]+$)[^/]+}"


def _coordinator(request: web.Request, record: TaskRecord) -> TaskCoordinator:
    run = request.app[DISPATCHER].live(record.task_id)
    return run.coordinator if run is not None else TaskCoordinator.restore(record.coordinator)


async def _task(request: web.Request) -> tuple[TaskRecord, Space]:
    """The URL's task and its space (the URL's, which the task must be in, or the task's own)."""
    task_id = request.match_info["taskId"]
    if "space" in request.match_info:
        space = await route_space(request)
        return await stored_task(request, task_id, space.name), space
    record = await stored_task(request, task_id, None)
    return record, await find_space(request, record.space)


def _view(request: web.Request, record: TaskRecord, space: Space) -> shapes_out.ServerTask:
    return shapes_out.server_task(record, _coordinator(request, record), space)


async def list_tasks(request: web.Request) -> web.Response:
    """Tasks of the space: those of ``ids`` when given, else all, newest first; paged."""
    query = query_of(request, {"ids", "skip", "take"})
    space = await route_space(request)
    skip, take = paging(query)
    ids = [i for i in query.get("ids", "").split(",") if i]
    if len(ids) > tasks.MAX_TASK_IDS:
        raise InvalidInput(f"ids: at most {tasks.MAX_TASK_IDS} ids", details={"path": "ids"})
    if ids:
        found = await request.app[DB].run(tasks.get_many, space.name, ids)
        total, records = len(found), found[skip : skip + take]
    else:
        total, records = await request.app[DB].run(tasks.page, space.name, skip, min(take, LOG_PAGE))
    items = [_view(request, as_held(request, r), space) for r in records]
    return answer(shapes_out.page_of("Task", items, total, take))


async def get_task(request: web.Request) -> web.Response:
    """One task as Octopus shows it."""
    record, space = await _task(request)
    return answer(_view(request, record, space))


async def get_details(request: web.Request) -> web.Response:
    """The task with its activity logs (``tail``: only the newest lines)."""
    query = query_of(request, {"verbose", "tail", "ranges"})
    record, space = await _task(request)
    _, tail = paging({"take": query.get("tail", str(MAX_DETAIL_LINES))})
    lines = await _lines(request, record.task_id, min(tail, MAX_DETAIL_LINES))
    coordinator = _coordinator(request, record)
    task = shapes_out.server_task(record, coordinator, space)
    return answer(shapes_out.details(task, record, coordinator.target_states(), lines))


async def _lines(request: web.Request, task_id: str, newest: int) -> list[dict[str, Any]]:
    """The task's last `newest` log lines (read page by page from the first)."""
    lines: list[dict[str, Any]] = []
    since = 0
    while newest:
        page = await request.app[DB].run(tasks.read_log, task_id, since, LOG_PAGE)
        lines = (lines + page)[-newest:]
        if len(page) < LOG_PAGE:
            break
        since = page[-1]["seq"]
    return lines


async def get_raw(request: web.Request) -> web.StreamResponse:
    """The task's whole log as text, one line per output line, sent as it is read."""
    record, space = await _task(request)
    task = _view(request, record, space)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    if request.method == "HEAD":  # the headers alone (aiohttp would send what is written)
        return response
    await response.write(_raw_header(task).encode())
    since = 0
    while True:
        page = await request.app[DB].run(tasks.read_log, record.task_id, since, LOG_PAGE)
        await response.write("".join(_raw_line(line) for line in page).encode("utf-8", "backslashreplace"))
        if len(page) < LOG_PAGE:
            break
        since = page[-1]["seq"]
    await response.write_eof()
    return response


def _raw_header(task: shapes_out.ServerTask) -> str:
    rows = [
        ("Task ID", task.id),
        ("Task status", task.state),
        ("Task queued", task.queue_time),
        ("Task completed", task.completed_time or ""),
        ("Task duration", task.duration),
        ("Description", task.description),
    ]
    if task.error_message:
        rows.append(("Error", task.error_message))
    return "".join(f"{name + ':':<16}{value}\n" for name, value in rows) + "\n"


def _raw_line(line: dict[str, Any]) -> str:
    level = "Error" if line["stream"] == "stderr" else "Info"
    step = f" {line['step']}:" if line["step"] else ""
    return f"{shapes_out.moment(line['time'])}  {level:<5}  [{line['machineName']}]{step} {line['text']}\n"


async def cancel(request: web.Request) -> web.Response:
    """Cancel the task; an ended one is answered as it is (cancelling it again changes nothing)."""
    record, space = await _task(request)
    if record.state not in tasks.FINAL_STATES:
        await cancel_running(request, record)
        record = await stored_task(request, record.task_id, None)
    return answer(_view(request, record, space))


def add_routes(app: web.Application) -> None:
    """Mount this module's routes (after our own: their ``.../v1`` paths are theirs)."""
    app.router.add_get("/api/{space}/tasks", list_tasks)
    for prefix in ("/api/{space}/tasks/", "/api/tasks/"):
        app.router.add_get(prefix + TASK_ID, get_task)
        app.router.add_get(prefix + "{taskId}/details", get_details)
        app.router.add_get(prefix + "{taskId}/raw", get_raw)
        app.router.add_post(prefix + "{taskId}/cancel", cancel)
