"""The operator and registration routes of the API (versioned, names not ids).

POST   /api/machines/register/v1             token + CSR -> signed certificate
POST   /api/machines/listening-port/v1       a listening tentacle's bound port (its certificate says who)
GET    /api/{space}/machines/v1               the machines list of design.md
DELETE /api/{space}/machines/{name}/v1        remove a machine, revoke its certificate
POST   /api/{space}/machines/{name}/replace/v1  a one-use token that may replace that machine

Registering a name that exists needs ``force`` and a token made for that machine
(`accounts.Token.check_replaces`); the replaced machine's certificate is revoked, and
its tasks are never handed to the newcomer (the dispatcher fails its part in them).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from aiohttp import web

from server_shim.api.bodies import (
    EndpointMoved,
    ListeningPort,
    MachineRemoved,
    MachineView,
    RegistrationAnswer,
    RegistrationRequest,
    ReplacementRequest,
    ReplacementToken,
    refusal,
)
from server_shim.api.middleware import API_KEY_NAME, DB, answer, read_body
from server_shim.api.space_routes import space_of as space_of
from server_shim.ca import Authority
from server_shim.dispatch.fleet import Fleet
from server_shim.dispatch.signer import Signer
from server_shim.store import accounts, node_rows, signing_keys, spaces, tenants
from server_shim.store import machine_rows as machines
from server_shim.store.machine_rows import Machine, MachineConflict, MachineNotFound
from tentacle.common.logs import event
from tentacle.errors import Conflict, Forbidden, NotFound, Unauthorized, UsageError
from tentacle.net import pki
from tentacle.net.tls import peer_thumbprint

log = logging.getLogger("server_shim.api.machine_routes")
FLEET = web.AppKey("fleet", Fleet)
AUTHORITY = web.AppKey("authority", Authority)
SIGNER = web.AppKey("signer", Signer)


@dataclass(frozen=True)
class ApiSettings:
    """What routes need to know about the server itself."""

    server_thumbprint: str
    polling_url: str
    ca_pem: str


SETTINGS = web.AppKey("settings", ApiSettings)


async def register(request: web.Request) -> web.Response:
    """A tentacle trades a token and a CSR for a certificate."""
    body = await read_body(request, RegistrationRequest)
    environments, roles = body.environments, body.roles
    db = request.app[DB]
    # A refused token (or a claim it does not allow) is reported before any CSR work.
    await db.run(accounts.check_token, body.token, environments, roles, body.name)
    cert = request.app[AUTHORITY].sign(body.csr, body.name)
    signer = request.app[SIGNER]
    key_id = signer.keyring.current  # pinned and answered alike, whatever a rotation does meanwhile
    machine = Machine(
        space=body.space,
        name=body.name,
        thumbprint=pki.cert_thumbprint(cert),
        certificate=pki.cert_pem(cert).decode(),
        mode=body.mode,
        endpoint=body.endpoint if body.mode == "listening" else None,
        environments=environments,
        roles=roles,
        registered_at=time.time(),
        tenants=body.tenants,
        tenant_tags=body.tenant_tags,
        tenanted_deployment=body.tenancy(),
    )

    def commit(conn: sqlite3.Connection) -> Machine | None:
        allowed = accounts.check_token(conn, body.token, environments, roles, body.name, use=True)
        _check_space_and_tenants(conn, machine)
        existing = machines.find(conn, machine.space, machine.name)
        if existing is not None and body.force:
            allowed.check_replaces(existing.name, existing.environments, existing.roles)
        machines.insert(conn, machine, force=body.force)
        signing_keys.pin(conn, machine.thumbprint, key_id)
        return existing

    try:
        replaced = await db.run(commit)
    except MachineConflict as exc:
        raise Conflict(exc.message, details={"field": "name"}) from exc
    signer.registered(machine.thumbprint, key_id)
    if replaced is not None:
        await request.app[FLEET].forget(machine.name, machine.space)
        event(log, "machine.replaced", space=machine.space, machine=machine.name, revoked=replaced.thumbprint)
    event(
        log,
        "machine.registered",
        space=machine.space,
        machine=machine.name,
        mode=machine.mode,
        thumbprint=machine.thumbprint,
    )
    settings = request.app[SETTINGS]
    nodes = await db.run(node_rows.polling_urls)
    registered = RegistrationAnswer(
        polling_urls=(settings.polling_url, *(url for url in nodes if url != settings.polling_url)),
        certificate=machine.certificate,
        ca_certificate=settings.ca_pem,
        server_thumbprint=settings.server_thumbprint,
        polling_url=settings.polling_url,
        machine=machine_view(machine, False, None),
        signing_key=signer.keyring.public(key_id),
    )
    return answer(registered, 201)


def _check_space_and_tenants(conn: sqlite3.Connection, machine: Machine) -> None:
    """The machine's space exists, and so do the tenants and tags it names there."""
    spaces.require(conn, machine.space)
    problems = tenants.machine_problems(conn, machine.space, machine.tenants, machine.tenant_tags)
    if problems:
        raise tenants.TenantError(problems)


def machine_view(machine: Machine, online: bool, last_seen: float | None) -> MachineView:
    """The machines-list entry of design.md; ``last_seen`` (live) wins over the stored one."""
    seen = last_seen or machine.last_seen
    return MachineView(
        name=machine.name,
        thumbprint=machine.thumbprint,
        mode=machine.mode,
        endpoint=machine.endpoint,
        environments=tuple(machine.environments),
        roles=tuple(machine.roles),
        status="online" if online else "offline",
        last_seen=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seen)) if seen else None,
        space=machine.space,
        tenants=tuple(machine.tenants),
        tenant_tags=tuple(machine.tenant_tags),
        tenanted_deployment=machine.tenanted_deployment,
    )


async def listening_port(request: web.Request) -> web.Response:
    """A listening tentacle registered with port 0 took a free port at start: from now on, that one."""
    presented = peer_thumbprint(request.transport)
    if presented is None:
        raise Unauthorized("a registered tentacle's client certificate is required")
    port = (await read_body(request, ListeningPort)).port
    try:
        machine = await request.app[DB].run(machines.move_port, presented, port)
    except MachineNotFound as exc:
        raise Forbidden(exc.message, details={"presentedThumbprint": presented}) from exc
    # Drop the link to the old port and the cached record; the machine's tasks go on.
    await request.app[FLEET].reconnect(machine.name, machine.space)
    event(log, "machine.endpoint_changed", machine=machine.name, endpoint=machine.endpoint)
    return answer(EndpointMoved(name=machine.name, endpoint=machine.endpoint))


async def remove_machine(request: web.Request) -> web.Response:
    """DELETE a machine: its certificate is revoked and its connection dropped."""
    space = await space_of(request)
    name = request.match_info["name"]
    try:
        machine = await request.app[DB].run(machines.revoke, space, name)
    except MachineNotFound as exc:
        raise NotFound(exc.message) from exc
    await request.app[FLEET].forget(name, space)
    event(log, "machine.removed", space=space, machine=name, thumbprint=machine.thumbprint)
    return answer(MachineRemoved(name=name, revoked_thumbprint=machine.thumbprint))


async def replacement_token(request: web.Request) -> web.Response:
    """POST: a one-use token that may replace this machine (and no other), within its claims.

    An operator's API key is what makes this safe: a registration token alone never
    replaces an existing machine. The token allows the machine's own environments and
    roles; for other claims make one with `server-shim token create --machine NAME`.
    """
    space = await space_of(request)
    name = request.match_info["name"]
    body = await read_body(request, ReplacementRequest)
    try:
        ttl = accounts.parse_duration(body.expires)
    except UsageError as exc:
        raise refusal("expires", "must look like 30m, 24h or 7d") from exc

    def issue(conn: sqlite3.Connection) -> tuple[Machine, str]:
        machine = machines.find(conn, space, name)
        if machine is None:
            raise MachineNotFound(f"machine {name!r} does not exist in space {space!r}")
        token = accounts.create_token(conn, 1, ttl, machine.environments, machine.roles, machine.name)
        return machine, token

    try:
        machine, token = await request.app[DB].run(issue)
    except MachineNotFound as exc:
        raise NotFound(exc.message) from exc
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + ttl))
    event(log, "machine.replacement_issued", machine=name, by=request.get(API_KEY_NAME, ""), expires=expires)
    issued = ReplacementToken(
        machine_name=machine.name,
        token=token,
        expires_at=expires,
        environments=machine.environments,
        roles=machine.roles,
    )
    return answer(issued, 201)


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_post("/api/machines/register/v1", register)
    app.router.add_post("/api/machines/listening-port/v1", listening_port)
    app.router.add_delete("/api/{space}/machines/{name}/v1", remove_machine)
    app.router.add_post("/api/{space}/machines/{name}/replace/v1", replacement_token)
