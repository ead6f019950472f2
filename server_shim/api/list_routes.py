"""The list routes: ``{items, totalCount}`` answers whose JSON the database builds.

GET /api/{space}/tasks/v1?skip&take&state&project&after   newest first; after=TASKID: keyset paging
GET /api/{space}/releases/v1?project&skip&take             newest first
GET /api/{space}/projects/v1?skip&take                     by name
GET /api/{space}/machines/v1?skip&take                     by name, status from every node

The answer's bytes come from one statement (`server_shim.store.list_rows`) and are written
as they are: no rows become Python objects on the way. ``render=python`` builds the same
answer from rows in Python, the way it was done before: the tests hold the two equal and
``bench lists`` compares their cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from aiohttp import web

from server_shim.api.middleware import DB
from server_shim.api.space_routes import space_of
from server_shim.store import list_rows
from server_shim.store.list_rows import Field, Query
from tentacle.errors import InvalidInput
from tentacle.protocol.states import TaskState

MAX_TAKE = 1000
DEFAULT_TAKE = 30


def _int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise InvalidInput(f"{name}: must be an integer", details={"field": name}) from exc
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be {low}-{high}, not {value}", details={"field": name})
    return value


def paging(request: web.Request, default_take: int | None = DEFAULT_TAKE) -> tuple[int, int | None]:
    """``skip`` (0 or more) and ``take`` (1-1000) from the query."""
    skip = _int(request, "skip", 0, 0, 2**62) or 0
    return skip, _int(request, "take", default_take, 1, MAX_TAKE)


async def respond(request: web.Request, fields: Sequence[Field], query: Query) -> web.Response:
    """Run the list's statement and send its JSON as it came (or the Python rendering of it)."""
    build: Callable[..., bytes] = list_rows.page_json
    if request.query.get("render") == "python":
        build = list_rows.page_python
    body = await request.app[DB].run(build, fields, query)
    return web.Response(body=body, content_type="application/json")


async def list_tasks(request: web.Request) -> web.Response:
    """The space's tasks, newest first, filtered by ``state`` and ``project``."""
    space = await space_of(request)
    skip, take = paging(request)
    state = request.query.get("state") or None
    if state is not None and state not in {s.value for s in TaskState}:
        allowed = ", ".join(s.value for s in TaskState)
        raise InvalidInput(f"state: must be one of {allowed}, not {state!r}", details={"field": "state"})
    query = list_rows.tasks_query(
        space, skip, take or DEFAULT_TAKE, state, request.query.get("project") or None,
        request.query.get("after") or None,
    )  # fmt: skip
    return await respond(request, list_rows.TASK_FIELDS, query)


async def list_releases(request: web.Request) -> web.Response:
    """The space's releases (of one ``project``), newest first."""
    space = await space_of(request)
    skip, take = paging(request)
    query = list_rows.releases_query(space, request.query.get("project") or None, skip, take or DEFAULT_TAKE)
    return await respond(request, list_rows.RELEASE_FIELDS, query)


async def list_projects(request: web.Request) -> web.Response:
    """The space's projects by name (every one unless ``take`` is given)."""
    space = await space_of(request)
    skip, take = paging(request, None)
    query = list_rows.projects_query(space, skip, take if take is not None else 2**62)
    return await respond(request, list_rows.PROJECT_FIELDS, query)


async def list_machines(request: web.Request) -> web.Response:
    """The space's machines by name, online when any live node reaches them (every one unless ``take``)."""
    space = await space_of(request)
    skip, take = paging(request, None)
    query = list_rows.machines_query(space, skip, take, time.time())
    return await respond(request, list_rows.MACHINE_FIELDS, query)


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_get("/api/{space}/tasks/v1", list_tasks)
    app.router.add_get("/api/{space}/releases/v1", list_releases)
    app.router.add_get("/api/{space}/projects/v1", list_projects)
    app.router.add_get("/api/{space}/machines/v1", list_machines)
