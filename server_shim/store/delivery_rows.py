"""The outbox: one delivery per event and reaction, sent in order, with every attempt recorded.

How it works. A delivery is queued in the transaction that records its event
(server_shim.store.events), so it exists exactly when the event does. Its id is made once
and goes out on every attempt. Deliveries of one reaction go in ``seq`` order: only the
oldest waiting one of each reaction (its head) is ever sent, so a later event never
overtakes an earlier one that is still being retried.

A node takes a head by claiming it for a lease (``claimed_by``, ``claimed_until``); the
attempt's result clears the claim in the same transaction that records it. A node that
died mid-attempt left its claim: the same node frees its own claims when it starts again
(`release_claims`), another waits for the lease to pass. So a delivery is sent at least
once, and never again once its 2xx is recorded (state ``succeeded``).

    state     pending ──2xx──▶ succeeded
                 │  ▲
                 │  └─ retry (attempts + 1, next_at later)
                 └── final refusal, or past its retry window ──▶ failed
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from server_shim.store import sealing
from server_shim.store.reaction_rows import parsed_document
from tentacle.protocol.reactions import Event, Reaction, lease_seconds
from tentacle.protocol.wire import decode, encode

AttemptStatus = Literal["succeeded", "retrying", "failed"]
MAX_LOG_CHARS = 256 * 1024


@dataclass(frozen=True)
class Due:
    """A claimed head: what to send, for which reaction, on which attempt."""

    delivery_id: str
    space: str
    reaction: str
    document: Reaction
    secret: str | None
    payload: Event
    attempt: int  # the number of the attempt about to be made (1-based)
    created_at: float


@dataclass(frozen=True)
class Attempt:
    """What one attempt gave."""

    status: AttemptStatus
    started_at: float
    duration: float
    response_code: int | None = None
    error: str | None = None
    log: str = ""
    retry_after: float | None = None  # what the receiver asked for, in seconds (a retried answer)


def enqueue(conn: sqlite3.Connection, space: str, reaction: str, payload: Event, now: float) -> str:
    """Queue a delivery of ``payload`` for the reaction; its id (the same on every attempt)."""
    delivery_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO deliveries (delivery_id, space, reaction, event_seq, kind, payload, state, attempts,"
        " created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
        (
            delivery_id,
            space,
            reaction,
            payload.seq or None,  # a webhook or a test event has no event row
            payload.kind,
            encode(payload).decode(),
            now,
            now,
        ),
    )
    return delivery_id


def release_claims(conn: sqlite3.Connection, node: str) -> int:
    """Free the claims a previous run of this node left (it was killed mid-attempt); how many."""
    cursor = conn.execute(
        "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL"
        " WHERE claimed_by = ? AND state = 'pending'",
        (node,),
    )
    return int(cursor.rowcount)


_HEADS = (
    "SELECT d.delivery_id, d.space, d.reaction, d.payload, d.attempts, d.created_at, d.next_at,"
    " d.claimed_until, r.document, r.secret FROM deliveries d"
    " JOIN (SELECT space, reaction, MIN(seq) AS seq FROM deliveries WHERE state = 'pending'"
    " GROUP BY space, reaction) h ON d.seq = h.seq"
    " JOIN reactions r ON r.space = d.space AND r.name = d.reaction"
)


def claim_due(conn: sqlite3.Connection, node: str, now: float) -> tuple[list[Due], float | None]:
    """Claim every head that is due and not claimed; also when the next one falls due (or None).

    A claim holds for longer than any attempt of the reaction's action takes (`lease_seconds`).
    """
    claimed: list[Due] = []
    wake: float | None = None
    for row in conn.execute(_HEADS).fetchall():
        ready = max(row["next_at"], row["claimed_until"] or 0.0)
        if ready > now:
            wake = ready if wake is None else min(wake, ready)
            continue
        taken = conn.execute(
            "UPDATE deliveries SET claimed_by = ?, claimed_until = ? WHERE delivery_id = ?"
            " AND state = 'pending' AND (claimed_until IS NULL OR claimed_until <= ?)",
            (node, now + lease_seconds(parsed_document(row["document"]).action), row["delivery_id"], now),
        )
        if taken.rowcount == 1:
            claimed.append(_due(conn, row))
    return claimed, wake


def _due(conn: sqlite3.Connection, row: sqlite3.Row) -> Due:
    secret = row["secret"]
    return Due(
        delivery_id=row["delivery_id"],
        space=row["space"],
        reaction=row["reaction"],
        document=parsed_document(row["document"]),
        secret=None if secret is None else sealing.open_value(conn, secret),
        payload=decode(row["payload"], Event),
        attempt=int(row["attempts"]) + 1,
        created_at=float(row["created_at"]),
    )


def finish_attempt(
    conn: sqlite3.Connection, due: Due, attempt: Attempt, next_at: float | None
) -> Literal["succeeded", "pending", "failed", "gone"]:
    """Record an attempt and what follows: done, again at ``next_at``, or failed for good.

    ``gone`` when the delivery is no longer waiting (its reaction was deleted meanwhile).
    """
    state = "succeeded" if attempt.status == "succeeded" else "pending" if next_at is not None else "failed"
    finished = None if state == "pending" else time.time()
    cursor = conn.execute(
        "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, finished_at = ?, claimed_by = NULL,"
        " claimed_until = NULL WHERE delivery_id = ? AND state = 'pending'",
        (
            state,
            due.attempt,
            next_at if next_at is not None else attempt.started_at,
            finished,
            due.delivery_id,
        ),
    )
    if cursor.rowcount != 1:
        return "gone"
    conn.execute(
        "INSERT INTO delivery_attempts"
        " (delivery_id, attempt, time, status, response_code, duration, error, log)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id, attempt) DO NOTHING",
        (
            due.delivery_id,
            due.attempt,
            attempt.started_at,
            "retrying" if state == "pending" else state,  # a retryable failure past the window: failed
            attempt.response_code,
            attempt.duration,
            attempt.error,
            attempt.log[-MAX_LOG_CHARS:],
        ),
    )
    return state  # type: ignore[return-value]  # one of the three by construction


def waiting(conn: sqlite3.Connection) -> int:
    """How many deliveries wait to be sent (all spaces)."""
    return int(conn.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone()[0])


def listing(
    conn: sqlite3.Connection, space: str, reaction: str, skip: int, take: int
) -> list[dict[str, Any]]:
    """The reaction's deliveries, newest first, each with its attempts (oldest first)."""
    rows = conn.execute(
        "SELECT delivery_id, event_seq, kind, state, attempts, created_at, next_at, finished_at"
        " FROM deliveries WHERE space = ? AND reaction = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
        (space, reaction, take, skip),
    ).fetchall()
    found = [dict(row) for row in rows]
    for delivery in found:
        delivery["attempt_rows"] = [
            dict(row)
            for row in conn.execute(
                "SELECT attempt, time, status, response_code, duration, error, log FROM delivery_attempts"
                " WHERE delivery_id = ? ORDER BY attempt",
                (delivery["delivery_id"],),
            )
        ]
    return found
