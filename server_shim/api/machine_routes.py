"""The operator and registration routes of the API (versioned, names not ids).

POST   /api/machines/register/v1             token + CSR -> signed certificate
GET    /api/{space}/machines/v1               the machines list of design.md
DELETE /api/{space}/machines/{name}/v1        remove a machine, revoke its certificate
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from aiohttp import web

from server_shim.api.middleware import DB, field, read_json, string_list
from server_shim.ca import Authority
from server_shim.dispatch.fleet import Fleet
from server_shim.store import accounts
from server_shim.store import machine_rows as machines
from server_shim.store.machine_rows import Machine, MachineConflict, MachineNotFound
from tentacle.common.logs import event
from tentacle.errors import Conflict, InvalidInput, NotFound
from tentacle.net import pki
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
        raise InvalidInput(f"{kind}: must be a non-empty list", details={"field": kind})
    try:
        return tuple(check_name(kind[:-1], v) for v in values)
    except ValueError as exc:
        raise InvalidInput(f"{kind}: {exc}", details={"field": kind}) from exc


def _registration(
    body: dict[str, object],
) -> tuple[str, str, str, str | None, tuple[str, ...], tuple[str, ...], bool]:
    name = field(body, "name", str)
    try:
        check_name("name", name)
    except ValueError as exc:
        raise InvalidInput(f"name: {exc}", details={"field": "name"}) from exc
    mode = field(body, "mode", str)
    if mode not in ("listening", "polling"):
        raise InvalidInput("mode: must be 'listening' or 'polling'", details={"field": "mode"})
    endpoint = field(body, "endpoint", str, required=mode == "listening")
    if endpoint is not None and (not endpoint.startswith("https://") or len(endpoint) > 300):
        raise InvalidInput("endpoint: must be an https:// URL", details={"field": "endpoint"})
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
        raise Conflict(exc.message, details={"field": "name"}) from exc
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


async def space_of(request: web.Request) -> str:
    """The route's space, which must exist."""
    space = request.match_info["space"]
    found = await request.app[DB].run(
        lambda conn: conn.execute("SELECT 1 FROM spaces WHERE name = ?", (space,)).fetchone()
    )
    if found is None:
        raise NotFound(f"space {space!r} does not exist")
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
        raise NotFound(exc.message) from exc
    await request.app[FLEET].forget(name)
    event(log, "machine.removed", machine=name, thumbprint=machine.thumbprint)
    return web.json_response({"name": name, "revokedThumbprint": machine.thumbprint})


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_post("/api/machines/register/v1", register)
    app.router.add_get("/api/{space}/machines/v1", list_machines)
    app.router.add_delete("/api/{space}/machines/{name}/v1", remove_machine)
