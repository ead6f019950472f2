"""The polling endpoint: polling tentacles keep a websocket open here.

TLS has already checked that the client certificate chains to our CA; this handler
then requires that its thumbprint belongs to a registered machine that was not
removed. Refusals answer 403 with a JSON error naming the presented thumbprint
and log the same. Once accepted, every text message from the tentacle is a
response to one of our requests (`PollingLink`).

What a tentacle sends is bounded: a message over `MAX_MESSAGE_BYTES` is refused as its
header arrives (the socket closes with 1009 and every call waiting on it fails for
good, ``agent.reply_too_large``); each answer must fit its call's limit; and a message
in progress must keep a minimum rate, measured on every chunk the connection receives
(`watch`), so a peer dribbling one is cut (``agent.reply_too_slow``). Pings and pongs
are answered here rather than by aiohttp, so that every whole frame counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import WebSocketError, web

from server_shim.api.machine_routes import FLEET
from server_shim.api.middleware import DB, error_response, errors
from server_shim.dispatch.fleet import Fleet, Key
from server_shim.dispatch.links import PollingLink
from server_shim.dispatch.reply_limits import too_large, too_slow
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
    ws = web.WebSocketResponse(
        heartbeat=request.app[HEARTBEAT], max_msg_size=messages.MAX_MESSAGE_BYTES, autoping=False
    )
    await ws.prepare(request)
    fleet = request.app[FLEET]
    link = PollingLink(ws, identified.name)
    watch(request, link)
    await fleet.mark(identified.key, True)  # before it counts as online here: every node's list agrees
    replaced = fleet.attach(identified, link)
    if replaced is not None:
        await replaced.close()
    reason = "closed"
    try:
        await _serve(ws, link, fleet, identified.key)
        reason = f"closed ({ws.close_code})"
    finally:
        if fleet.detach(identified.key, link, reason) and not fleet.closing:
            await fleet.mark(identified.key, False, reason)
    return ws


async def _serve(ws: web.WebSocketResponse, link: PollingLink, fleet: Fleet, key: Key) -> None:
    """Read the tentacle's frames until the socket closes."""
    async for msg in ws:
        link.meter.whole()
        if msg.type is aiohttp.WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type is aiohttp.WSMsgType.TEXT:
            fleet.touch(key)
            _deliver(link, msg.data, link.machine)
        elif msg.type is aiohttp.WSMsgType.ERROR:
            _broken(link, msg.data)
            break


def _broken(link: PollingLink, error: object) -> None:
    """The socket failed; a message over the limit is the tentacle's fault, and fails its calls for good."""
    if isinstance(error, WebSocketError) and error.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
        limit = messages.MAX_MESSAGE_BYTES
        link.cut(too_large(link.machine, link.waiting(), f"more than {limit}", limit))


def watch(request: web.Request, link: PollingLink) -> None:
    """Measure every chunk the connection receives, and cut a message that comes too slowly."""

    def arrived(count: int) -> None:
        if link.meter.arrived(count) and link.misbehaved is None:
            rule = link.meter.rule
            received, seconds = (rule.received, rule.elapsed()) if rule else (0, 0.0)
            link.cut(too_slow(link.machine, link.waiting(), received, seconds))

    # aiohttp hands each chunk of an upgraded connection to the websocket parser it was given
    # (`set_parser`); standing in front of that parser sees the bytes before they are parsed.
    protocol = request.protocol
    parser = getattr(protocol, "_payload_parser", None)
    if parser is None:
        event(log, "polling.unmetered", logging.WARNING, machine=link.machine)
        return
    protocol._payload_parser = _Metered(parser, arrived)


class _Metered:
    """A websocket parser that reports the size of every chunk before parsing it."""

    def __init__(self, parser: Any, arrived: Callable[[int], None]) -> None:
        self._parser, self._arrived = parser, arrived

    def feed_data(self, data: bytes) -> Any:
        """Count, then parse."""
        self._arrived(len(data))
        return self._parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


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
        link.deliver(message, len(data))


def make_app(base: web.Application, heartbeat: float) -> web.Application:
    """The polling site's application, sharing the API app's state."""
    app = web.Application(middlewares=[errors])  # a request that is not a websocket gets a JSON error too
    app[DB] = base[DB]
    app[FLEET] = base[FLEET]
    app[HEARTBEAT] = heartbeat
    app.router.add_get(POLL_PATH, poll)
    return app
