"""The events, reactions and webhook routes.

GET    /api/{space}/events/v1?since=SEQ&kind=K&take=N     events after SEQ -> {items, lastSeq}
PUT    /api/{space}/reactions/{name}/v1                    the reaction document -> 201 created, 200 replaced
GET    /api/{space}/reactions/v1                           {items: [reaction]} (secrets never shown)
GET    /api/{space}/reactions/{name}/v1                    one reaction
DELETE /api/{space}/reactions/{name}/v1                    remove it (its waiting deliveries are dropped)
GET    /api/{space}/reactions/{name}/deliveries/v1?skip&take   deliveries, newest first, with attempts
POST   /api/{space}/reactions/{name}/fire/v1               queue a test event -> 202 {deliveryId}
POST   /api/{space}/hooks/{name}/v1                        a webhook call (JSON body, any query) -> 202

A webhook takes its API key in ``X-Api-Key`` or ``?apiKey=`` (the middleware checks it; the
key is not passed on). Its body is any JSON value of at most `MAX_HOOK_BODY` bytes (none
at all is ``null``); the action gets the body and the rest of the query.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import msgspec
from aiohttp import web

from server_shim.api.bodies import refusal
from server_shim.api.middleware import DB, answer, read_document, read_limited
from server_shim.api.reaction_bodies import (
    AttemptView,
    DeliveryList,
    DeliveryQueued,
    DeliveryView,
    EventPage,
    ReactionDeleted,
    ReactionList,
    ReactionView,
)
from server_shim.api.space_routes import space_of
from server_shim.store import delivery_rows, events, reaction_rows
from server_shim.store.events import iso
from server_shim.store.reaction_rows import StoredReaction
from tentacle.common.logs import event
from tentacle.errors import BadJson, NotFound
from tentacle.protocol.reactions import EVENT_KINDS, WEBHOOK_KIND, Event, Trigger, parse_reaction

log = logging.getLogger("server_shim.api.reaction_routes")
MAX_HOOK_BODY = 1024 * 1024
MAX_PAGE = 1000
_DIGITS = re.compile(r"^[0-9]{1,19}\Z")  # ASCII digits only, and no 5,000-digit number to convert


class HookNotFound(NotFound):
    """No reaction of that name with a webhook trigger."""


def _number(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not _DIGITS.match(text) or not low <= int(text) <= high:
        raise refusal(name, f"must be a whole number from {low} to {high}")
    return int(text)


def _reaction_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not reaction_rows.NAME.match(name):
        raise refusal(
            "name", "must be 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


async def list_events(request: web.Request) -> web.Response:
    """The space's events after ``since``, oldest first."""
    space = await space_of(request)
    since = _number(request, "since", 0, 0, 2**62)
    take = _number(request, "take", 100, 1, MAX_PAGE)
    kinds = [kind for given in request.query.getall("kind", []) for kind in given.split(",") if kind]
    for kind in kinds:
        if kind not in EVENT_KINDS:
            raise refusal("kind", f"unknown event kind {kind[:100]!r} (known: {', '.join(EVENT_KINDS)})")
    found = await request.app[DB].run(events.page, space, since, kinds, take)
    return answer(EventPage(items=found, last_seq=found[-1].seq if found else since))


def _view(stored: StoredReaction) -> ReactionView:
    document = reaction_rows.shown_document(stored)
    webhook = stored.reaction.trigger.webhook
    return ReactionView(
        name=stored.name,
        trigger=document["trigger"],  # type: ignore[arg-type]  # a JSON object by the document's type
        action=document["action"],  # type: ignore[arg-type]
        created_at=iso(stored.created_at),
        updated_at=iso(stored.updated_at),
        hook_path=f"/api/{stored.space}/hooks/{stored.name}/v1" if webhook else None,
    )


async def put_reaction(request: web.Request) -> web.Response:
    """Create or replace a reaction."""
    space = await space_of(request)
    name = _reaction_name(request)
    reaction = parse_reaction(await read_document(request), name)
    created = await request.app[DB].run(reaction_rows.put, space, name, reaction)
    stored = await request.app[DB].run(reaction_rows.get, space, name)
    event(log, "reaction.created" if created else "reaction.updated", space=space, reaction=name)
    return answer(_view(stored), 201 if created else 200)


async def list_reactions(request: web.Request) -> web.Response:
    """Every reaction of the space."""
    space = await space_of(request)
    found = await request.app[DB].run(reaction_rows.listing, space)
    return answer(ReactionList(items=[_view(stored) for stored in found]))


async def get_reaction(request: web.Request) -> web.Response:
    """One reaction."""
    space = await space_of(request)
    return answer(_view(await request.app[DB].run(reaction_rows.get, space, _reaction_name(request))))


async def delete_reaction(request: web.Request) -> web.Response:
    """Remove a reaction and its deliveries."""
    space = await space_of(request)
    name = _reaction_name(request)
    await request.app[DB].run(reaction_rows.delete, space, name)
    event(log, "reaction.deleted", space=space, reaction=name)
    return answer(ReactionDeleted(name=name))


async def list_deliveries(request: web.Request) -> web.Response:
    """The reaction's deliveries, newest first, each with its attempts."""
    space = await space_of(request)
    name = _reaction_name(request)
    skip = _number(request, "skip", 0, 0, 2**31)
    take = _number(request, "take", 50, 1, MAX_PAGE)
    db = request.app[DB]
    await db.run(reaction_rows.get, space, name)  # an unknown reaction is a 404, not an empty list
    rows = await db.run(delivery_rows.listing, space, name, skip, take)
    return answer(DeliveryList(reaction=name, items=[_delivery(row) for row in rows]))


def _delivery(row: dict[str, Any]) -> DeliveryView:
    attempts = [
        AttemptView(
            attempt=a["attempt"],
            time=iso(a["time"]),
            status=a["status"],
            response_code=a["response_code"],
            duration=round(a["duration"], 4),
            error=a["error"],
            log=a["log"],
        )
        for a in row["attempt_rows"]
    ]
    last = attempts[-1] if attempts else None
    pending = row["state"] == "pending"
    return DeliveryView(
        delivery_id=row["delivery_id"],
        event_seq=row["event_seq"],
        event_kind=row["kind"],
        state=row["state"],
        created_at=iso(row["created_at"]),
        time=last.time if last else None,
        attempt=len(attempts),
        status=last.status if last else "waiting",
        response_code=last.response_code if last else None,
        duration=last.duration if last else None,
        error=last.error if last else None,
        next_attempt_at=iso(row["next_at"]) if pending else None,
        finished_at=iso(row["finished_at"]) if row["finished_at"] else None,
        attempts=attempts,
    )


def sample_event(space: str, trigger: Trigger) -> Event:
    """What `reaction fire` sends: the trigger's first kind, with the first value of each filter."""
    return Event(
        seq=0,
        kind=trigger.events[0] if trigger.events else WEBHOOK_KIND,
        time=iso(time.time()),
        space=space,
        project_name=trigger.projects[0] if trigger.projects else None,
        environment_names=trigger.environments[:1],
        tenant_name=trigger.tenants[0] if trigger.tenants else None,
        roles=trigger.roles[:1],
        details={"test": True, **({"body": None, "query": {}} if trigger.webhook else {})},
    )


async def fire(request: web.Request) -> web.Response:
    """Queue a test event for the reaction."""
    space = await space_of(request)
    name = _reaction_name(request)
    db = request.app[DB]
    stored = await db.run(reaction_rows.get, space, name)
    delivery_id = await db.run(
        events.enqueue_direct, space, name, sample_event(space, stored.reaction.trigger)
    )
    event(log, "reaction.fired", space=space, reaction=name, delivery=delivery_id)
    return answer(DeliveryQueued(delivery_id=delivery_id, reaction=name), 202)


async def hook(request: web.Request) -> web.Response:
    """A webhook call: queue a delivery of its body and query for the reaction."""
    space = await space_of(request)
    name = request.match_info["name"]
    db = request.app[DB]
    stored = await db.run(reaction_rows.find, space, name) if reaction_rows.NAME.match(name) else None
    if stored is None or not stored.reaction.trigger.webhook:
        raise HookNotFound(f"no reaction with a webhook trigger is named {name[:200]!r} in space {space!r}")
    body = _hook_body(await read_limited(request, MAX_HOOK_BODY, "webhook body"))
    query = {key: value for key, value in request.query.items() if key != "apiKey"}
    payload = Event(
        seq=0,
        kind=WEBHOOK_KIND,
        time=iso(time.time()),
        space=space,
        details={"hook": name, "body": body, "query": query},
    )
    delivery_id = await db.run(events.enqueue_direct, space, name, payload)
    event(log, "hook.received", space=space, reaction=name, delivery=delivery_id)
    return answer(DeliveryQueued(delivery_id=delivery_id, reaction=name), 202)


def _hook_body(raw: bytes) -> Any:
    """The body as a JSON value (an empty body is null); BadJson for anything else."""
    if not raw.strip():
        return None
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadJson(f"webhook body must be JSON: {exc}") from exc


def add_routes(app: web.Application) -> None:
    """Mount this module's routes."""
    app.router.add_get("/api/{space}/events/v1", list_events)
    app.router.add_get("/api/{space}/reactions/v1", list_reactions)
    app.router.add_put("/api/{space}/reactions/{name}/v1", put_reaction)
    app.router.add_get("/api/{space}/reactions/{name}/v1", get_reaction)
    app.router.add_delete("/api/{space}/reactions/{name}/v1", delete_reaction)
    app.router.add_get("/api/{space}/reactions/{name}/deliveries/v1", list_deliveries)
    app.router.add_post("/api/{space}/reactions/{name}/fire/v1", fire)
    app.router.add_post("/api/{space}/hooks/{name}/v1", hook)
