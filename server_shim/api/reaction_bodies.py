"""The answers of the events, reactions and hooks routes, as typed wire structs.

A reaction's request body is the reaction document itself (tentacle.protocol.reactions);
what is answered is here, camelCase on the wire as every other answer.
"""

from __future__ import annotations

from typing import Any

from tentacle.protocol.reactions import Event
from tentacle.protocol.wire import Wire


class EventPage(Wire, frozen=True):
    """``GET /api/{space}/events/v1``: events after ``since``; ``lastSeq`` is the next ``since``."""

    items: list[Event]
    last_seq: int


class ReactionView(Wire, frozen=True):
    """A reaction as shown: its document without the secret (``hasSecret`` says if there is one)."""

    name: str
    trigger: dict[str, Any]
    action: dict[str, Any]
    created_at: str
    updated_at: str
    hook_path: str | None = None  # where a webhook trigger is called


class ReactionList(Wire, frozen=True):
    """``GET /api/{space}/reactions/v1``."""

    items: list[ReactionView]


class ReactionDeleted(Wire, frozen=True):
    """``DELETE /api/{space}/reactions/{name}/v1``."""

    name: str


class AttemptView(Wire, frozen=True):
    """One attempt of a delivery: when, which, how it went (``duration`` in seconds)."""

    attempt: int
    time: str
    status: str  # succeeded | retrying | failed
    response_code: int | None
    duration: float
    error: str | None
    log: str


class DeliveryView(Wire, frozen=True):
    """A delivery with its latest attempt's figures in front, and every attempt after."""

    delivery_id: str
    event_seq: int | None
    event_kind: str
    state: str  # pending | succeeded | failed
    created_at: str
    time: str | None  # of the latest attempt
    attempt: int  # how many attempts were made
    status: str  # of the latest attempt; "waiting" before the first
    response_code: int | None
    duration: float | None
    error: str | None
    next_attempt_at: str | None
    finished_at: str | None
    attempts: list[AttemptView]


class DeliveryList(Wire, frozen=True):
    """``GET /api/{space}/reactions/{name}/deliveries/v1``: newest first."""

    reaction: str
    items: list[DeliveryView]


class DeliveryQueued(Wire, frozen=True):
    """A webhook call or a test event was queued: its delivery's id."""

    delivery_id: str
    reaction: str
