"""The space routes, and the check every ``{space}`` route makes.

POST /api/spaces/v1     {name} -> 201 {name, id}
GET  /api/spaces/v1     {items: [{name, id}]}

`space_of` gives a route's space when it exists (404 naming it otherwise); the URL may
name it or give its id (``/api/Spaces-1/...``, as Octopus's clients do). Spaces are never
deleted nor renamed, so a space once found is remembered for the life of the process: the
common case costs no trip to the database thread.
"""

from __future__ import annotations

import logging

from aiohttp import web

from server_shim.api.bodies import SpaceList, SpaceRequest, SpaceView
from server_shim.api.middleware import DB, answer, read_body
from server_shim.store import spaces
from tentacle.common.logs import event

log = logging.getLogger("server_shim.api.space_routes")
KNOWN = web.AppKey("known_spaces", dict[str, spaces.Space])


async def space_of(request: web.Request) -> str:
    """The name of the route's space (given by name or id), which must exist."""
    return (await route_space(request)).name


async def route_space(request: web.Request) -> spaces.Space:
    """The route's space (given by name or id), which must exist."""
    return await find_space(request, request.match_info["space"])


async def find_space(request: web.Request, given: str) -> spaces.Space:
    """The space of that name or id, which must exist."""
    known = request.app.get(KNOWN)
    found = None if known is None else known.get(given)
    if found is None:
        found = await request.app[DB].run(spaces.resolve, given)
        if known is not None:
            known[given] = found
    return found


async def create_space(request: web.Request) -> web.Response:
    """Create a space: 201 with its name and id; 409 when the name is taken."""
    body = await read_body(request, SpaceRequest)
    space = await request.app[DB].run(spaces.create, body.name)
    event(log, "space.created", space=space.name, id=space.space_id)
    return answer(SpaceView(name=space.name, id=space.space_id), 201)


async def list_spaces(request: web.Request) -> web.Response:
    """Every space with its id."""
    found = await request.app[DB].run(spaces.listing)
    return answer(SpaceList(items=[SpaceView(name=s.name, id=s.space_id) for s in found]))


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app[KNOWN] = {}
    app.router.add_post("/api/spaces/v1", create_space)
    app.router.add_get("/api/spaces/v1", list_spaces)
