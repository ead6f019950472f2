"""The plan-signing key routes (operators, with an API key).

POST /api/signing-keys/rotate/v1   a new current key; every machine is handed it (signer's courier)
GET  /api/signing-keys/v1          the keys held, how many machines pin each, who lacks the current one
"""

from __future__ import annotations

import logging

from aiohttp import web

from server_shim.api.bodies import PendingMachine, SigningKeyRotated, SigningKeyStatus, SigningKeyView
from server_shim.api.machine_routes import SIGNER
from server_shim.api.middleware import API_KEY_NAME, DB, answer
from server_shim.store import signing_keys
from tentacle.common.logs import event

log = logging.getLogger("server_shim.api.signing_routes")


async def rotate(request: web.Request) -> web.Response:
    """Make a new current signing key; machines get it over their old key's signature."""
    signer = request.app[SIGNER]
    current, previous = await signer.rotate()
    pending = await request.app[DB].run(signing_keys.pending, current)
    event(
        log, "signing.rotate_requested", key=current, by=request.get(API_KEY_NAME, ""), pending=len(pending)
    )
    rotated = SigningKeyRotated(
        key_id=current,
        public_key=signer.keyring.public(current),
        previous_key_id=previous,
        pending_machines=len(pending),
    )
    return answer(rotated, 201)


async def status(request: web.Request) -> web.Response:
    """The keys held and the machines that have not pinned the current one."""
    signer = request.app[SIGNER]
    await signer.refresh()  # as the database has it now, whichever node rotated
    current = signer.keyring.current
    usage = await request.app[DB].run(signing_keys.usage)
    pending = await request.app[DB].run(signing_keys.pending, current)
    shown = SigningKeyStatus(
        current_key_id=current,
        public_key=signer.keyring.public(current),
        keys=[SigningKeyView(key_id=k, current=c, machines=n) for k, c, n in usage],
        pending=[PendingMachine(space=p.space, name=p.name, key_id=p.key_id) for p in pending],
    )
    return answer(shown)


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_post("/api/signing-keys/rotate/v1", rotate)
    app.router.add_get("/api/signing-keys/v1", status)
