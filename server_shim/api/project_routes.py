"""The project and release routes of the API.

PUT  /api/{space}/projects/{name}/v1     the process document -> 201 created, 200 replaced
GET  /api/{space}/projects/{name}/v1     the stored process document (normalized), secrets left out
POST /api/{space}/releases/create/v1     {projectName, releaseVersion?, packageVersions?, channelName?,
                                          ignoreChannelRules?}

Every check that needs no database runs before the one transaction that writes, and
that transaction rolls back on any error, so a refused request creates nothing. The
errors raised here and in `projects` carry their status (400, 404, 409); the
``errors`` middleware turns them into the JSON error body.

Sensitive values are write-only, as in Octopus: `GET` shows such a variable with
``"sensitive": true`` and no ``value``. A `PUT` whose sensitive variable has no value (or
``null``) keeps the stored value of the variable of the same name and scopes, so the
document `GET` gives can be edited and put back without the secrets; a changed secret is
sent with its new value, and one whose name or scopes changed needs its value again.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from msgspec import UNSET

from server_shim.api.bodies import ProjectSaved, ReleaseCreated, ReleaseRequest, refusal
from server_shim.api.middleware import DB, answer, read_body, read_document
from server_shim.api.space_routes import space_of
from server_shim.store import project_rows as projects
from tentacle.common.logs import event
from tentacle.protocol.documents import NAME_MAX, text_problem
from tentacle.protocol.process import parse_process

log = logging.getLogger("server_shim.store.project_rows")


def _url_name(request: web.Request) -> str:
    """The project name of the URL, checked like the document's ``name``."""
    name = request.match_info["name"]
    problem = text_problem(name)
    if problem is None and len(name) > NAME_MAX:  # the route never matches an empty one
        problem = f"must be at most {NAME_MAX} characters"
    if problem is not None:
        raise refusal("name", problem)
    return name


async def put_project(request: web.Request) -> web.Response:
    """Create or replace a project's process."""
    space = await space_of(request)
    name = _url_name(request)
    document, unsent = _placeholders(await read_document(request))
    process = parse_process(document, name)
    created = await request.app[DB].run(projects.put_project, space, name, process, unsent)
    event(log, "project.created" if created else "project.updated", space=space, project=name)
    saved = ProjectSaved(name=name, steps=len(process.steps), runbooks=list(process.runbooks))
    return answer(saved, 201 if created else 200)


async def get_project(request: web.Request) -> web.Response:
    """The project's process document."""
    space = await space_of(request)
    process = await request.app[DB].run(projects.get_project, space, _url_name(request))
    return answer(_without_secrets(process.to_json()))  # its shape is the process rules' (tentacle.protocol)


def _placeholders(document: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """The document with an empty value in each sensitive variable sent without one, and their indexes."""
    variables = document.get("variables")
    if not isinstance(variables, list):
        return document, []
    unsent = [
        index
        for index, variable in enumerate(variables)
        if isinstance(variable, dict) and variable.get("sensitive") is True and variable.get("value") is None
    ]
    if not unsent:
        return document, []
    missing = set(unsent)
    filled = [{**v, "value": ""} if index in missing else v for index, v in enumerate(variables)]
    return {**document, "variables": filled}, unsent


def _without_secrets(document: dict[str, Any]) -> dict[str, Any]:
    """The stored document as `GET` shows it: sensitive variables without their value."""
    variables = [
        {key: value for key, value in variable.items() if key != "value"}
        if variable.get("sensitive")
        else variable
        for variable in document.get("variables", [])
    ]
    return {**document, "variables": variables}


async def create_release(request: web.Request) -> web.Response:
    """Snapshot a project's process and package versions as a release."""
    space = await space_of(request)
    body = await read_body(request, ReleaseRequest)
    release = await make_release(request, space, body)
    created = ReleaseCreated(
        project_name=body.project_name,
        release_version=release.version,
        package_versions={package_id: ref.version for package_id, ref in release.packages.items()},
        channel_name=release.channel,
    )
    return answer(created, 201)


async def make_release(request: web.Request, space: str, body: ReleaseRequest) -> projects.Release:
    """Store a release (the route's work, whatever the body's shape)."""
    release = await request.app[DB].run(
        projects.create_release,
        space,
        body.project_name,
        None if body.release_version is UNSET else body.release_version,
        body.package_versions,
        body.channel_name,
        body.ignore_channel_rules,
    )
    event(
        log,
        "release.created",
        space=space,
        project=body.project_name,
        version=release.version,
        channel=release.channel,
    )
    return release


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_put("/api/{space}/projects/{name}/v1", put_project)
    app.router.add_get("/api/{space}/projects/{name}/v1", get_project)
    app.router.add_post("/api/{space}/releases/create/v1", create_release)
