"""The project and release routes of the API.

PUT  /api/{space}/projects/{name}/v1     the process document -> 201 created, 200 replaced
GET  /api/{space}/projects/{name}/v1     the stored process document (normalized)
POST /api/{space}/releases/create/v1     {projectName, releaseVersion, packageVersions?}

Every check that needs no database runs before the one transaction that writes, and
that transaction rolls back on any error, so a refused request creates nothing. The
errors raised here and in `projects` carry their status (400, 404, 409); the
``errors`` middleware turns them into the JSON error body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, cast

from aiohttp import web

from server_shim.api.machine_routes import space_of
from server_shim.api.middleware import DB, read_json
from server_shim.store import project_rows as projects
from server_shim.store.project_rows import MAX_VERSION_CHARS, ReleaseRequestError
from tentacle.common.logs import event
from tentacle.protocol.documents import key_path
from tentacle.protocol.json_fields import FieldReader
from tentacle.protocol.process import MAX_PACKAGE_ID, ProcessError, parse_process

log = logging.getLogger("server_shim.store.project_rows")

_RELEASE_FIELDS: Final = ("projectName", "releaseVersion", "packageVersions")
MAX_PACKAGE_VERSIONS: Final = 1000


def _url_name(request: web.Request) -> str:
    """The project name of the URL, checked like the document's ``name``."""
    name = request.match_info["name"]
    reader = FieldReader()
    reader.check_text(name, "name")
    reader.raise_if_any(ProcessError)
    return name


async def put_project(request: web.Request) -> web.Response:
    """Create or replace a project's process."""
    space = await space_of(request)
    name = _url_name(request)
    process = parse_process(await read_json(request), name)
    created = await request.app[DB].run(projects.put_project, space, name, process)
    event(log, "project.created" if created else "project.updated", space=space, project=name)
    answer = {"name": name, "steps": len(process.steps), "runbooks": list(process.runbooks)}
    return web.json_response(answer, status=201 if created else 200)


async def get_project(request: web.Request) -> web.Response:
    """The project's process document."""
    space = await space_of(request)
    process = await request.app[DB].run(projects.get_project, space, _url_name(request))
    return web.json_response(process.to_json())


def release_request(body: Mapping[str, object]) -> tuple[str, str, dict[str, str]]:
    """``(projectName, releaseVersion, packageVersions)`` of a request, or every problem."""
    reader = FieldReader()
    reader.obj(body, "", _RELEASE_FIELDS)
    project = reader.text(body, "projectName", "")
    version = reader.text(body, "releaseVersion", "", max_chars=MAX_VERSION_CHARS)
    versions = _package_versions(reader, body.get("packageVersions"))
    reader.raise_if_any(ReleaseRequestError)
    # Both are strings here: the reader raised above if either was missing or wrong.
    return cast(str, project), cast(str, version), versions


def _package_versions(reader: FieldReader, raw: object) -> dict[str, str]:
    """``packageVersions``: package id -> version text (both bounded strings)."""
    if raw is None:
        return {}
    given = reader.obj(raw, "packageVersions", None)
    if given is None:
        return {}
    if len(given) > MAX_PACKAGE_VERSIONS:
        reader.problem("packageVersions", f"must have at most {MAX_PACKAGE_VERSIONS} entries")
        return {}
    versions: dict[str, str] = {}
    for package_id, value in given.items():
        if reader.check_text(package_id, "packageVersions", max_chars=MAX_PACKAGE_ID) is None:
            continue
        text = reader.check_text(value, key_path("packageVersions", package_id), max_chars=MAX_VERSION_CHARS)
        if text is not None:
            versions[package_id] = text
    return versions


async def create_release(request: web.Request) -> web.Response:
    """Snapshot a project's process and package versions as a release."""
    space = await space_of(request)
    project, version, versions = release_request(await read_json(request))
    release = await request.app[DB].run(projects.create_release, space, project, version, versions)
    event(log, "release.created", space=space, project=project, version=release.version)
    answer: dict[str, Any] = {
        "projectName": project,
        "releaseVersion": release.version,
        "packageVersions": {package_id: ref.version for package_id, ref in release.packages.items()},
    }
    return web.json_response(answer, status=201)


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_put("/api/{space}/projects/{name}/v1", put_project)
    app.router.add_get("/api/{space}/projects/{name}/v1", get_project)
    app.router.add_post("/api/{space}/releases/create/v1", create_release)
