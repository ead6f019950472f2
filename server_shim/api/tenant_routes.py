"""Tag sets, tenants and tenanted deployments.

PUT  /api/{space}/tagsets/{name}/v1                  {tags} -> 201 created, 200 replaced
GET  /api/{space}/tagsets/v1                         {items: [{name, tags}]}
PUT  /api/{space}/tenants/{name}/v1                  {tags, projects, variables} -> 201 / 200
GET  /api/{space}/tenants/v1                         {items: [tenant]} (sensitive values left out)
GET  /api/{space}/tenants/{name}/v1                  one tenant
POST /api/{space}/deployments/create/tenanted/v1     {projectName, releaseVersion, environmentName,
                                                      tenantNames?, tenantTags?, options...}
                                                     -> 201 {deployments: [{tenantName, taskId}]}

A tenanted deployment is one request and one transaction: one task per tenant, all stored
or none (server_shim.store.deployments), then queued together.
"""

from __future__ import annotations

import logging

from aiohttp import web

from server_shim.api.bodies import (
    TagSetList,
    TagSetView,
    TenantedCreated,
    TenantedDeploymentRequest,
    TenantList,
    TenantTask,
    refusal,
)
from server_shim.api.middleware import DB, answer, read_body, read_document
from server_shim.api.space_routes import space_of
from server_shim.api.task_routes import DISPATCHER, options
from server_shim.store import deployments, tenants
from server_shim.store.task_rows import TaskRecord
from tentacle.common.logs import event
from tentacle.protocol.documents import NAME_MAX, text_problem

log = logging.getLogger("server_shim.api.tenant_routes")


def _url_name(request: web.Request, limit: int = NAME_MAX) -> str:
    """The tenant or tag set name of the URL, checked like a document's ``name``."""
    name = request.match_info["name"]
    problem = text_problem(name)
    if problem is None and len(name) > limit:  # the route never matches an empty one
        problem = f"must be at most {limit} characters"
    if problem is None and limit < NAME_MAX and "/" in name:
        problem = "must not contain '/' (tags are named TagSet/Tag)"
    if problem is not None:
        raise refusal("name", problem)
    return name


async def put_tag_set(request: web.Request) -> web.Response:
    """Create or replace a tag set."""
    space = await space_of(request)
    name = _url_name(request, 100)
    tag_set = tenants.parse_tag_set(await read_document(request), name)
    created = await request.app[DB].run(tenants.put_tag_set, space, name, tag_set)
    event(log, "tagset.created" if created else "tagset.updated", space=space, tagset=name)
    return answer(TagSetView(name=name, tags=list(tag_set.tags)), 201 if created else 200)


async def list_tag_sets(request: web.Request) -> web.Response:
    """Every tag set of the space."""
    space = await space_of(request)
    found = await request.app[DB].run(tenants.tag_sets, space)
    return answer(TagSetList(items=[TagSetView(name=name, tags=tags) for name, tags in found.items()]))


async def put_tenant(request: web.Request) -> web.Response:
    """Create or replace a tenant (its tags and projects must exist in the space)."""
    space = await space_of(request)
    name = _url_name(request)
    tenant = tenants.parse_tenant(await read_document(request), name)
    created, stored = await request.app[DB].run(tenants.put_tenant, space, name, tenant)
    event(log, "tenant.created" if created else "tenant.updated", space=space, tenant=name)
    return answer(stored.shown(), 201 if created else 200)


async def list_tenants(request: web.Request) -> web.Response:
    """Every tenant of the space, without sensitive values."""
    space = await space_of(request)
    found = await request.app[DB].run(tenants.listing, space)
    return answer(TenantList(items=[tenant.document.shown() for tenant in found]))


async def get_tenant(request: web.Request) -> web.Response:
    """One tenant, without sensitive values."""
    space = await space_of(request)
    found = await request.app[DB].run(tenants.get, space, _url_name(request))
    return answer(found.document.shown())


async def create_tenanted_deployment(request: web.Request) -> web.Response:
    """Deploy a release to tenants: one request, one task per tenant, all or none."""
    space = await space_of(request)
    records = await start_tenanted(request, space, await read_body(request, TenantedDeploymentRequest))
    created = [TenantTask(tenant_name=str(r.tenant), task_id=r.task_id) for r in records]
    return answer(TenantedCreated(deployments=created), 201)


async def start_tenanted(
    request: web.Request, space: str, body: TenantedDeploymentRequest
) -> list[TaskRecord]:
    """Store and queue one task per tenant (the route's work, whatever the body's shape)."""
    req = deployments.TenantedRequest(
        space=space,
        project=body.project_name,
        release_version=body.release_version,
        environment=body.environment_name,
        tenant_names=tuple(dict.fromkeys(body.tenant_names)),
        tenant_tags=tuple(dict.fromkeys(body.tenant_tags)),
        options=options(body),
    )
    records = await request.app[DB].run(deployments.create_tenanted, req)
    await request.app[DISPATCHER].submit(*records)
    event(log, "deployment.tenanted", space=space, project=req.project, tasks=len(records))
    return records


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_put("/api/{space}/tagsets/{name}/v1", put_tag_set)
    app.router.add_get("/api/{space}/tagsets/v1", list_tag_sets)
    app.router.add_put("/api/{space}/tenants/{name}/v1", put_tenant)
    app.router.add_get("/api/{space}/tenants/v1", list_tenants)
    app.router.add_get("/api/{space}/tenants/{name}/v1", get_tenant)
    app.router.add_post("/api/{space}/deployments/create/tenanted/v1", create_tenanted_deployment)
