"""The operator and registration routes of the API (versioned, names not ids).

POST   /api/machines/register/v1             token + CSR -> signed certificate
POST   /api/machines/listening-port/v1       a listening tentacle's bound port (its certificate says who)
GET    /api/{space}/machines/v1               the machines list of design.md
DELETE /api/{space}/machines/{name}/v1        remove a machine, revoke its certificate
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from aiohttp import web

from server_shim.api.middleware import DB, ApiError, field, read_json, string_list
from server_shim.ca import Authority
from server_shim.dispatch.fleet import Fleet
from server_shim.store import accounts
from server_shim.store import machine_rows as machines
from server_shim.store.machine_rows import Machine, MachineConflict, MachineNotFound, NotListening
from tentacle.common.logs import event
from tentacle.net import pki
from tentacle.net.tls import peer_thumbprint
from tentacle.protocol.identity import check_name

log = logging.getLogger("server_shim.api.machine_routes")
FLEET = web.AppKey("fleet", Fleet)
AUTHORITY = web.AppKey("authority", Authority)


@dataclass(frozen=True)
class ApiSettings:
    """What routes need to know about the server itself."""

    server_thumbprint: str
    polling_url: str
    ca_pem: str


SETTINGS = web.AppKey("settings", ApiSettings)


def _names(kind: str, values: list[str]) -> tuple[str, ...]:
    if not values:
        raise ApiError(400, "invalid", f"{kind}: must be a non-empty list", {"field": kind})
    try:
        return tuple(check_name(kind[:-1], v) for v in values)
    except ValueError as exc:
        raise ApiError(400, "invalid", f"{kind}: {exc}", {"field": kind}) from exc


def _registration(
    body: dict[str, object],
) -> tuple[str, str, str, str | None, tuple[str, ...], tuple[str, ...], bool]:
    name = field(body, "name", str)
    try:
        check_name("name", name)
    except ValueError as exc:
        raise ApiError(400, "invalid", f"name: {exc}", {"field": "name"}) from exc
    mode = field(body, "mode", str)
    if mode not in ("listening", "polling"):
        raise ApiError(400, "invalid", "mode: must be 'listening' or 'polling'", {"field": "mode"})
    endpoint = field(body, "endpoint", str, required=mode == "listening")
    if endpoint is not None and (not endpoint.startswith("https://") or len(endpoint) > 300):
        raise ApiError(400, "invalid", "endpoint: must be an https:// URL", {"field": "endpoint"})
    environments = _names("environments", string_list(body, "environments"))
    roles = _names("roles", string_list(body, "roles"))
    return (
        field(body, "token", str),
        field(body, "csr", str),
        name,
        endpoint if mode == "listening" else None,
        environments,
        roles,
        bool(field(body, "force", bool, required=False, default=False)),
    )


async def register(request: web.Request) -> web.Response:
    """A tentacle trades a token and a CSR for a certificate."""
    body = await read_json(request)
    token, csr, name, endpoint, environments, roles, force = _registration(body)
    db = request.app[DB]
    # A refused token (or a claim it does not allow) is reported before any CSR work.
    await db.run(accounts.check_token, token, environments, roles)
    cert = request.app[AUTHORITY].sign(csr, name)
    machine = Machine(
        space="Default",
        name=name,
        thumbprint=pki.cert_thumbprint(cert),
        certificate=pki.cert_pem(cert).decode(),
        mode="listening" if endpoint else "polling",
        endpoint=endpoint,
        environments=environments,
        roles=roles,
        registered_at=time.time(),
    )

    def commit(conn: sqlite3.Connection) -> None:
        accounts.use_token(conn, token, environments, roles)
        machines.insert(conn, machine, force=force)

    try:
        await db.run(commit)
    except MachineConflict as exc:
        raise ApiError(409, "conflict", exc.message, {"field": "name"}) from exc
    if force:
        await request.app[FLEET].forget(name)
    event(log, "machine.registered", machine=name, mode=machine.mode, thumbprint=machine.thumbprint)
    settings = request.app[SETTINGS]
    return web.json_response(
        {
            "certificate": machine.certificate,
            "caCertificate": settings.ca_pem,
            "serverThumbprint": settings.server_thumbprint,
            "pollingUrl": settings.polling_url,
            "machine": machines.to_json(machine, False, None),
        },
        status=201,
    )


async def listening_port(request: web.Request) -> web.Response:
    """A listening tentacle registered with port 0 took a free port at start: from now on, that one."""
    presented = peer_thumbprint(request.transport)
    if presented is None:
        raise ApiError(401, "unauthorized", "a registered tentacle's client certificate is required")
    port = field(await read_json(request), "port", int)
    if not 1 <= port <= 65535:
        raise ApiError(400, "invalid", f"port: must be 1-65535, not {port}", {"field": "port"})
    try:
        machine = await request.app[DB].run(machines.move_port, presented, port)
    except MachineNotFound as exc:
        raise ApiError(403, "unregistered", exc.message, {"presentedThumbprint": presented}) from exc
    except NotListening as exc:
        raise ApiError(409, "conflict", exc.message, {"field": "port"}) from exc
    await request.app[FLEET].forget(machine.name)  # the link to the old port, the cached record
    event(log, "machine.endpoint_changed", machine=machine.name, endpoint=machine.endpoint)
    return web.json_response({"name": machine.name, "endpoint": machine.endpoint})


async def space_of(request: web.Request) -> str:
    """The route's space, which must exist."""
    space = request.match_info["space"]
    found = await request.app[DB].run(
        lambda conn: conn.execute("SELECT 1 FROM spaces WHERE name = ?", (space,)).fetchone()
    )
    if found is None:
        raise ApiError(404, "not-found", f"space {space!r} does not exist")
    return space


async def list_machines(request: web.Request) -> web.Response:
    """GET the machines of a space with their live status."""
    space = await space_of(request)
    rows = await request.app[DB].run(machines.listing, space)
    fleet = request.app[FLEET]
    items = [machines.to_json(m, fleet.is_online(m.name), fleet.seen.get(m.name)) for m in rows]
    return web.json_response({"items": items})


async def remove_machine(request: web.Request) -> web.Response:
    """DELETE a machine: its certificate is revoked and its connection dropped."""
    space = await space_of(request)
    name = request.match_info["name"]
    try:
        machine = await request.app[DB].run(machines.revoke, space, name)
    except MachineNotFound as exc:
        raise ApiError(404, "not-found", exc.message) from exc
    await request.app[FLEET].forget(name)
    event(log, "machine.removed", machine=name, thumbprint=machine.thumbprint)
    return web.json_response({"name": name, "revokedThumbprint": machine.thumbprint})


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_post("/api/machines/register/v1", register)
    app.router.add_post("/api/machines/listening-port/v1", listening_port)
    app.router.add_get("/api/{space}/machines/v1", list_machines)
    app.router.add_delete("/api/{space}/machines/{name}/v1", remove_machine)
