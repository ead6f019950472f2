"""The polling endpoint: polling tentacles keep a websocket open here.

TLS has already checked that the client certificate chains to our CA; this handler
then requires that its thumbprint belongs to a registered machine that was not
removed. Refusals answer 403 with a JSON error naming the presented thumbprint
and log the same. Once accepted, every text message from the tentacle is a
response to one of our requests (`PollingLink`).
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from server_shim.api.machine_routes import FLEET
from server_shim.api.middleware import DB, error_response, errors
from server_shim.dispatch.links import PollingLink
from server_shim.store import machine_rows as machines
from tentacle.common.logs import event
from tentacle.net.tls import peer_thumbprint
from tentacle.protocol import messages
from tentacle.protocol.messages import MessageError, Response

log = logging.getLogger("server_shim.api.polling_site")
POLL_PATH = "/poll/v1"
HEARTBEAT = web.AppKey("heartbeat", float)


async def _identify(request: web.Request) -> machines.Machine | web.Response:
    presented = peer_thumbprint(request.transport)
    if presented is None:
        return _refuse(request, 401, "no-certificate", "a client certificate is required", "none")

    def lookup(conn: object) -> tuple[machines.Machine | None, bool]:
        return machines.by_thumbprint(conn, presented), machines.is_revoked(conn, presented)  # type: ignore[arg-type]

    machine, revoked = await request.app[DB].run(lookup)
    if revoked:
        return _refuse(
            request, 403, "revoked", f"certificate {presented} was revoked (machine removed)", presented
        )
    if machine is None:
        return _refuse(request, 403, "unregistered", f"certificate {presented} is not registered", presented)
    if machine.mode != "polling":
        return _refuse(
            request, 409, "wrong-mode", f"machine {machine.name!r} is registered as listening", presented
        )
    return machine


def _refuse(request: web.Request, status: int, code: str, message: str, presented: str) -> web.Response:
    event(log, "trust.refused", logging.WARNING, peer=request.remote, presented=presented, reason=code)
    return error_response(status, code, message, {"presentedThumbprint": presented})


async def poll(request: web.Request) -> web.StreamResponse:
    """Accept a polling tentacle's websocket and serve it until it closes."""
    identified = await _identify(request)
    if isinstance(identified, web.Response):
        return identified
    ws = web.WebSocketResponse(heartbeat=request.app[HEARTBEAT], max_msg_size=messages.MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    fleet = request.app[FLEET]
    link = PollingLink(ws, identified.name)
    replaced = fleet.attach(identified, link)
    if replaced is not None:
        await replaced.close()
    reason = "closed"
    try:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            fleet.touch(identified.key)
            _deliver(link, msg.data, identified.name)
        reason = f"closed ({ws.close_code})"
    finally:
        fleet.detach(identified.key, link, reason)
    return ws


def _deliver(link: PollingLink, data: str, name: str) -> None:
    """Hand a response to its caller; a malformed one fails its call, when its id can be read."""
    try:
        message = messages.decode(data)
    except MessageError as exc:
        event(log, "polling.bad_message", logging.WARNING, machine=name, reason=exc.message)
        found = messages.peek(data)
        if found is not None and found[0] == "response":
            link.refuse(found[1], exc)
        return
    if isinstance(message, Response):
        link.deliver(message)


def make_app(base: web.Application, heartbeat: float) -> web.Application:
    """The polling site's application, sharing the API app's state."""
    app = web.Application(middlewares=[errors])  # a request that is not a websocket gets a JSON error too
    app[DB] = base[DB]
    app[FLEET] = base[FLEET]
    app[HEARTBEAT] = heartbeat
    app.router.add_get(POLL_PATH, poll)
    return app
