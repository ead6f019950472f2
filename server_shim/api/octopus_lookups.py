"""What Octopus's CI actions read after they create: deployments, runbook runs, environments, tenants.

Octopus's deploy and runbook actions, once the tasks are queued, look the new deployments
(or runbook runs) up by id, then their environments and tenants by id, to print which task
went where. These lists answer those lookups from what this server holds; the ids are
derived from names (`octopus_answers.named_id`), so nothing new is stored.

GET /api/{space}/deployments?ids&skip&take   {Items: [{Id, TaskId, EnvironmentId, TenantId, ReleaseId...}]}
GET /api/{space}/runbookRuns?ids&skip&take   the same for runbook runs (RunbookId)
GET /api/{space}/environments?ids&partialName&skip&take, and .../environments/v2 (and ``type``)
GET /api/{space}/tenants?ids&partialName&skip&take

An environment here is a name machines or tenants carry, not a stored thing: the list holds
every environment a machine of the space is in or a tenant is connected to. A parameter
these lists do not know is refused (400), never ignored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from server_shim.api import octopus_answers as out
from server_shim.api.middleware import DB, answer
from server_shim.api.octopus_routes import paging, query_of
from server_shim.api.space_routes import route_space
from server_shim.api.task_routes import as_held
from server_shim.store import machine_rows as machines
from server_shim.store import task_rows as tasks
from server_shim.store import tenants
from server_shim.store.spaces import Space
from server_shim.store.task_rows import TaskRecord

T = TypeVar("T")


class Execution(out.Answer, frozen=True, kw_only=True):
    """What a deployment and a runbook run share, as Octopus shows them."""

    id: str
    space_id: str
    name: str
    task_id: str
    project_id: str
    environment_id: str
    tenant_id: str | None
    created: str
    links: dict[str, str]


class Deployment(Execution, frozen=True, kw_only=True):
    """A deployment: the task that deploys a release."""

    release_id: str
    channel_id: str | None = None
    force_package_redeployment: bool = False


class RunbookRun(Execution, frozen=True, kw_only=True):
    """A runbook run: the task that runs a runbook."""

    runbook_id: str
    runbook_snapshot_id: str | None = None


class Environment(out.Answer, frozen=True, kw_only=True):
    """An environment (Octopus's v1 and v2 fields)."""

    id: str
    space_id: str
    name: str
    slug: str
    description: str = ""
    type: str = "Static"
    sort_order: int
    use_guided_failure: bool = False
    allow_dynamic_infrastructure: bool = False
    extension_settings: list[Any] = msgspec.field(default_factory=list)
    links: dict[str, str] = msgspec.field(default_factory=dict)


class TenantResource(out.Answer, frozen=True, kw_only=True):
    """A tenant: its tags, and the environments of each project it is connected to (by id)."""

    id: str
    space_id: str
    name: str
    description: str | None = None
    cloned_from_tenant_id: str | None = None
    tenant_tags: list[str]
    project_environments: dict[str, list[str]]
    links: dict[str, str] = msgspec.field(default_factory=dict)


def _execution(record: TaskRecord, space: Space) -> dict[str, Any]:
    """The fields both kinds of execution take from a task."""
    return {
        "id": out.execution_id(record),
        "space_id": space.space_id,
        "name": out.description(record),
        "task_id": record.task_id,
        "project_id": out.named_id("Projects", space, record.project),
        "environment_id": out.named_id("Environments", space, record.environment.split(",")[0]),
        "tenant_id": out.named_id("Tenants", space, record.tenant) if record.tenant else None,
        "created": out.moment(record.created_at) or "",
        "links": {"Task": f"/api/{space.space_id}/tasks/{record.task_id}"},
    }


def deployment(record: TaskRecord, space: Space) -> Deployment:
    """A deployment task as Octopus's Deployment."""
    release = out.release_id(space, record.project, record.release_version)
    return Deployment(release_id=release, **_execution(record, space))


def runbook_run(record: TaskRecord, space: Space) -> RunbookRun:
    """A runbook task as Octopus's RunbookRun."""
    runbook = out.named_id("Runbooks", space, record.project, record.runbook or "")
    return RunbookRun(runbook_id=runbook, **_execution(record, space))


def _ids(query: dict[str, str]) -> list[str]:
    return [i for i in query.get("ids", "").split(",") if i]


def _page(request: web.Request, item_type: str, items: list[T], query: dict[str, str]) -> web.Response:
    """`items` filtered by ``partialName`` (``Name``), paged by ``skip`` and ``take``."""
    part = query.get("partialName", "").lower()
    chosen = [item for item in items if part in str(getattr(item, "name", "")).lower()]
    skip, take = paging(query)
    return answer(out.page_of(item_type, chosen[skip : skip + take], len(chosen), take))


async def _executions(
    request: web.Request, prefix: str, kind: str, build: Callable[[TaskRecord, Space], Any], item_type: str
) -> web.Response:
    """The executions of `kind` whose ids are given (``Deployments-1a2b...`` is task ``T-1a2b...``)."""
    query = query_of(request, {"ids", "skip", "take"})
    space = await route_space(request)
    wanted = ["T-" + i.removeprefix(prefix) for i in _ids(query) if i.startswith(prefix)]
    found = await request.app[DB].run(tasks.get_many, space.name, wanted[: tasks.MAX_TASK_IDS])
    items = [build(as_held(request, r), space) for r in found if r.kind == kind]
    return _page(request, item_type, items, query)


async def list_deployments(request: web.Request) -> web.Response:
    """Deployments by id."""
    return await _executions(request, "Deployments-", "deployment", deployment, "Deployment")


async def list_runbook_runs(request: web.Request) -> web.Response:
    """Runbook runs by id."""
    return await _executions(request, "RunbookRuns-", "runbook", runbook_run, "RunbookRun")


def _environment_names(conn: sqlite3.Connection, space: str) -> list[str]:
    """Every environment a machine of the space is in or a tenant of it is connected to, sorted."""
    names = {env for machine in machines.listing(conn, space) for env in machine.environments}
    for tenant in tenants.listing(conn, space):
        names.update(env for envs in tenant.document.projects.values() for env in envs)
    return sorted(names)


async def list_environments(request: web.Request) -> web.Response:
    """Environments, by id or partial name (``/environments/v2`` takes ``type``: Static is all there is)."""
    allowed = {"ids", "partialName", "skip", "take"} | ({"type"} if request.path.endswith("/v2") else set())
    query = query_of(request, allowed)
    space = await route_space(request)
    names = await request.app[DB].run(_environment_names, space.name)
    items = [
        Environment(
            id=out.named_id("Environments", space, name),
            space_id=space.space_id,
            name=name,
            slug=name.lower().replace(" ", "-"),
            sort_order=order,
        )
        for order, name in enumerate(names)
    ]
    ids = set(_ids(query))
    kinds = set(filter(None, query.get("type", "").split(",")))
    chosen = [e for e in items if (not ids or e.id in ids) and (not kinds or e.type in kinds)]
    return _page(request, "Environment", chosen, query)


async def list_tenants(request: web.Request) -> web.Response:
    """Tenants, by id or partial name; their projects and environments by id."""
    query = query_of(request, {"ids", "partialName", "skip", "take"})
    space = await route_space(request)
    found = await request.app[DB].run(tenants.listing, space.name)
    items = [
        TenantResource(
            id=out.named_id("Tenants", space, t.name),
            space_id=space.space_id,
            name=t.name,
            tenant_tags=list(t.document.tags),
            project_environments={
                out.named_id("Projects", space, project): [
                    out.named_id("Environments", space, e) for e in envs
                ]
                for project, envs in t.document.projects.items()
            },
        )
        for t in found
    ]
    ids = set(_ids(query))
    return _page(request, "Tenant", [t for t in items if not ids or t.id in ids], query)


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_get("/api/{space}/deployments", list_deployments)
    app.router.add_get("/api/{space}/runbookRuns", list_runbook_runs)
    app.router.add_get("/api/{space}/environments", list_environments)
    app.router.add_get("/api/{space}/environments/v2", list_environments)
    app.router.add_get("/api/{space}/tenants", list_tenants)
