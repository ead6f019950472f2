"""Octopus Deploy's own clients against this server: an adapter at the API's edge.

Octopus's Executions API and ours share their paths (``/api/{space}/releases/create/v1``
and the three create routes of tasks), so one path serves both shapes: `octopus_bodies`
looks at a create request's keys and, when they are an Octopus command's (see
`octopus_shapes.is_octopus_shaped`), answers it here; any other body reaches our own route
untouched (the bytes read are left for it, `middleware.RAW_BODY`). An Octopus command
becomes our own request body, is carried out by the very functions our routes call
(`task_routes.start_deployment` and the others), and the result goes back in Octopus's
shape. The URL names the space by name or by id (``Spaces-1``, what Octopus's clients put
there). One difference shows: a deployment to several environments is one task here (its
gates hold across all of them), where Octopus makes one per environment; the answer lists
the tasks there are.

GET  /api                                            the root document: Version, InstallationId
GET  /api/spaces?partialName&ids&skip&take           {TotalResults, Items: [{Id, Name, ...}]}
GET  /api/spaces/{id}                                one space
POST /api/{space}/releases/create/v1                 -> {ReleaseId, ReleaseVersion}
POST /api/{space}/deployments/create/untenanted/v1   -> {DeploymentServerTasks: [...]}
POST /api/{space}/deployments/create/tenanted/v1     -> {DeploymentServerTasks: [...]}
POST /api/{space}/runbook-runs/create/v1             -> {RunbookRunServerTasks: [...]}
POST /api/{space}/runbook-runs/git/create/v1         400: no Git runbooks here

Octopus's API key header (``X-Octopus-ApiKey``, or ``Authorization: Bearer KEY``) is taken
as ours (`octopus_keys`). The task routes Octopus's clients poll are in octopus_tasks.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web
from multidict import CIMultiDict

from server_shim.api import octopus_answers as shapes_out
from server_shim.api import project_routes, task_routes, tenant_routes
from server_shim.api.machine_routes import SETTINGS
from server_shim.api.middleware import DB, Handler, answer, read_document, read_raw
from server_shim.api.octopus_shapes import (
    Command,
    CreateDeploymentTenanted,
    CreateDeploymentUntenanted,
    CreateRelease,
    CreateRunbookRun,
    decode_command,
    is_octopus_shaped,
    unsupported_error,
)
from server_shim.api.space_routes import route_space
from server_shim.store import project_rows as projects
from server_shim.store import spaces
from server_shim.store.spaces import Space
from server_shim.store.task_rows import TaskRecord
from tentacle.common.logs import event
from tentacle.errors import InvalidInput
from tentacle.protocol.process import Process

log = logging.getLogger("server_shim.api.octopus_routes")
OctopusHandler = Callable[[web.Request, Space, dict[str, Any]], Awaitable[web.Response]]
C = TypeVar("C", bound=Command)
MAX_TAKE: Final = 2**31 - 1  # what the clients ask for when they want everything


@web.middleware
async def octopus_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take Octopus's API key headers as ours (``X-Api-Key`` wins when both are given)."""
    if not request.path.startswith("/api/") or "X-Api-Key" in request.headers:
        return await handler(request)
    key = request.headers.get("X-Octopus-ApiKey", "")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not key and scheme.lower() == "bearer":
        key = token.strip()
    if not key:
        return await handler(request)
    headers = CIMultiDict(request.headers)
    headers["X-Api-Key"] = key
    return await handler(request.clone(headers=headers))


@web.middleware
async def octopus_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer an Octopus-shaped create request here; anything else goes on to our own route."""
    resource = request.match_info.route.resource
    octopus = _CREATES.get(resource.canonical) if resource is not None and request.method == "POST" else None
    if octopus is None or not _octopus_keys(await read_raw(request)):
        return await handler(request)
    space = await route_space(request)
    return await octopus(request, space, await read_document(request))


def _octopus_keys(raw: bytes) -> bool:
    """Whether the body is a JSON object with an Octopus command's keys (values are not parsed)."""
    try:
        keys = list(msgspec.json.decode(raw, type=dict[str, msgspec.Raw]))
    except (msgspec.DecodeError, RecursionError):
        return False  # our own route reads it and says what is wrong
    return is_octopus_shaped(keys)


def _command(document: dict[str, Any], kind: type[C], space: Space) -> C:
    """The command, checked: its space is the URL's, and it asks for nothing unsupported."""
    command = decode_command(document, kind)
    command.check_space(space.name, space.space_id)
    problems = command.unsupported()
    if problems:
        raise unsupported_error(problems)
    return command


async def create_release(request: web.Request, space: Space, document: dict[str, Any]) -> web.Response:
    """Octopus's create-release: our release, or with IgnoreIfAlreadyExists the one already made."""
    command = _command(document, CreateRelease, space)
    version = command.version() if command.ignore_if_already_exists else None
    process, existing = await request.app[DB].run(
        _project_and_release, space.name, command.project_name, version
    )
    status = 200
    if existing is None:
        ours = command.ours(process)
        ours.check()
        try:
            existing, status = await project_routes.make_release(request, space.name, ours), 201
        except projects.ReleaseExists as exc:  # made meanwhile, or the version the server would make
            taken = exc.details.get("releaseVersion")
            if not command.ignore_if_already_exists or not isinstance(taken, str):
                raise
            _, existing = await request.app[DB].run(
                _project_and_release, space.name, command.project_name, taken
            )
            if existing is None:
                raise
    event(log, "octopus.release", space=space.name, project=command.project_name, version=existing.version)
    made = shapes_out.ReleaseCreated(
        release_id=shapes_out.release_id(space, existing.project, existing.version),
        release_version=existing.version,
    )
    return answer(made, status)


def _project_and_release(
    conn: sqlite3.Connection, space: str, project: str, version: str | None
) -> tuple[Process, projects.Release | None]:
    """The project's process, and its release of `version` when one is asked for and exists."""
    process = projects.get_project(conn, space, project)
    if version is None:
        return process, None
    try:
        return process, projects.get_release(conn, space, project, version)
    except projects.ReleaseNotFound:
        return process, None


async def deploy_untenanted(request: web.Request, space: Space, document: dict[str, Any]) -> web.Response:
    """Octopus's untenanted deployment: one task."""
    command = _command(document, CreateDeploymentUntenanted, space)
    ours = command.ours()
    ours.check()
    record = await task_routes.start_deployment(request, space.name, ours)
    return answer(_deployments([record]), 201)


async def deploy_tenanted(request: web.Request, space: Space, document: dict[str, Any]) -> web.Response:
    """Octopus's tenanted deployment: one task per tenant."""
    command = _command(document, CreateDeploymentTenanted, space)
    ours = command.ours()
    ours.check()
    records = await tenant_routes.start_tenanted(request, space.name, ours)
    return answer(_deployments(records), 201)


def _deployments(records: list[TaskRecord]) -> shapes_out.DeploymentsCreated:
    tasks = [
        shapes_out.DeploymentServerTask(deployment_id=shapes_out.execution_id(r), server_task_id=r.task_id)
        for r in records
    ]
    return shapes_out.DeploymentsCreated(deployment_server_tasks=tasks)


async def run_runbook(request: web.Request, space: Space, document: dict[str, Any]) -> web.Response:
    """Octopus's runbook run: one task."""
    command = _command(document, CreateRunbookRun, space)
    ours = command.ours()
    ours.check()
    record = await task_routes.start_runbook_run(request, space.name, ours)
    run = shapes_out.RunbookRunServerTask(
        runbook_run_id=shapes_out.execution_id(record), server_task_id=record.task_id
    )
    return answer(shapes_out.RunbookRunsCreated(runbook_run_server_tasks=[run]), 201)


async def git_runbook(request: web.Request) -> web.Response:
    """Octopus's Git runbook run: refused, saying why and what to use instead."""
    await route_space(request)
    raise InvalidInput(
        "Git runbooks are not supported here: a runbook lives in its project's process document;"
        " run it with POST /api/{space}/runbook-runs/create/v1 (RunbookName)",
        details={"path": "gitRef"},
    )


async def root(request: web.Request) -> web.Response:
    """The API's root document (no key needed, as on Octopus): the version the clients check."""
    links = {"Self": "/api", "Spaces": "/api/spaces{/id}{?skip,ids,take,partialName}"}
    installation = shapes_out.installation_id(request.app[SETTINGS].ca_pem)
    return answer(shapes_out.RootDocument(installation_id=installation, links=links))


async def list_spaces(request: web.Request) -> web.Response:
    """Spaces, filtered by ``partialName`` (any case) and ``ids``, paged by ``skip`` and ``take``."""
    query = query_of(request, {"partialName", "ids", "skip", "take"})
    found = await request.app[DB].run(spaces.listing)
    part = query.get("partialName", "").lower()
    ids = set(filter(None, query.get("ids", "").split(",")))
    chosen = [s for s in found if part in s.name.lower() and (not ids or s.space_id in ids)]
    skip, take = paging(query)
    items = [shapes_out.space_resource(s) for s in chosen[skip : skip + take]]
    return answer(shapes_out.page_of("Space", items, len(chosen), take))


async def get_space(request: web.Request) -> web.Response:
    """One space, by id (or name)."""
    return answer(shapes_out.space_resource(await route_space(request)))


def query_of(request: web.Request, allowed: set[str]) -> dict[str, str]:
    """The query parameters, each once; a parameter this server does not know is refused, not ignored."""
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise InvalidInput(
            f"{unknown[0]}: this query parameter is not supported here (known: {', '.join(sorted(allowed))})",
            details={"path": unknown[0]},
        )
    return {name: request.query.getone(name) for name in request.query}


def paging(query: dict[str, str]) -> tuple[int, int]:
    """(skip, take) of a list request: skip 0 and take 30 unless given (Octopus's defaults)."""
    numbers = {"skip": 0, "take": 30}
    for name in numbers:
        text = query.get(name)
        if text is None:
            continue
        if not text.isdigit() or int(text) > MAX_TAKE:
            raise InvalidInput(f"{name}: must be a whole number from 0 to {MAX_TAKE}", details={"path": name})
        numbers[name] = int(text)
    return numbers["skip"], numbers["take"]


_CREATES: dict[str, OctopusHandler] = {
    "/api/{space}/releases/create/v1": create_release,
    "/api/{space}/deployments/create/untenanted/v1": deploy_untenanted,
    "/api/{space}/deployments/create/tenanted/v1": deploy_tenanted,
    "/api/{space}/runbook-runs/create/v1": run_runbook,
}


def add_routes(app: web.Application) -> None:
    """Mount this module's routes (after our own: ``/api/spaces/v1`` is ours)."""
    app.router.add_get("/api", root)
    app.router.add_get("/api/spaces", list_spaces)
    app.router.add_get("/api/spaces/{space}", get_space)
    app.router.add_post("/api/{space}/runbook-runs/git/create/v1", git_runbook)
