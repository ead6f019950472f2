"""Events: numbered, durable records of what changed, written in the change's own transaction.

How it works. The store function that makes a change calls `record` (or one of the helpers
below) with the same connection, inside the same transaction: the event exists exactly
when the change does, and one that rolled back left no event. `record` also matches the
event against the space's reactions and queues a delivery for each that it sets off
(server_shim.store.delivery_rows), still in that transaction: the outbox cannot miss an
event. Listeners (`subscribe`: the server's reactor) are told, on the database thread,
that something was queued; they read it after the commit, since their reads queue behind it.

Events are numbered by ``seq`` across the server; `page` reads a space's after a number
(an event of no space, a package pushed to the built-in feed, is in every space's list).
On PostgreSQL several nodes write at once, and a sequence hands out numbers in the order
transactions ask, not the order they commit: each transaction that records an event holds
an advisory lock until it ends, so that events become visible in the order of their numbers
and a reader at ``since=N`` misses none (a rolled-back number is a gap, never a late arrival).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server_shim.store import delivery_rows, dialects, reaction_rows
from tentacle.protocol.reactions import Event, matches

_listeners: list[Callable[[], None]] = []
DEPLOYMENT_KINDS = {
    "queued": "deploymentQueued",
    "running": "deploymentStarted",
    "success": "deploymentSucceeded",
    "failed": "deploymentFailed",
    "cancelled": "deploymentCancelled",
}


def subscribe(listener: Callable[[], None]) -> None:
    """Call ``listener()`` (from the database thread; it must be quick and thread-safe) on every queueing."""
    _listeners.append(listener)


def unsubscribe(listener: Callable[[], None]) -> None:
    """Stop telling ``listener``."""
    with contextlib.suppress(ValueError):
        _listeners.remove(listener)


def iso(stamp: float) -> str:
    """An epoch time as ISO 8601 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}Z"


def record(
    conn: sqlite3.Connection,
    kind: str,
    space: str | None,
    *,
    project: str | None = None,
    release: str | None = None,
    environments: Sequence[str] = (),
    tenant: str | None = None,
    machine: str | None = None,
    task_id: str | None = None,
    task_state: str | None = None,
    roles: Sequence[str] = (),
    details: dict[str, Any] | None = None,
) -> Event:
    """Record an event (in the caller's transaction) and queue the deliveries it sets off."""
    if dialects.dialect(conn) == dialects.POSTGRESQL:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (dialects.EVENT_ORDER_LOCK,))
    now = time.time()
    row = conn.execute(
        "INSERT INTO events (space, kind, time, project, release_version, environments, tenant, machine,"
        " task_id, task_state, roles, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        (
            *(space, kind, now, project, release, json.dumps(list(environments)), tenant, machine),
            *(task_id, task_state, json.dumps(list(roles)), json.dumps(details or {})),
        ),
    ).fetchone()
    event = Event(
        seq=int(row[0]),
        kind=kind,
        time=iso(now),
        space=space,
        project_name=project,
        release_version=release,
        environment_names=tuple(environments),
        tenant_name=tenant,
        machine_name=machine,
        task_id=task_id,
        task_state=task_state,
        roles=tuple(roles),
        details=details or {},
    )
    queued = [
        delivery_rows.enqueue(conn, owner, name, event, now)
        for owner, name, trigger in reaction_rows.event_triggers(conn, space)
        if matches(trigger, event, name)
    ]
    if queued:
        _notify()
    return event


def enqueue_direct(conn: sqlite3.Connection, space: str, reaction: str, payload: Event) -> str:
    """Queue a delivery that no recorded event made (a webhook call, a test event); its id."""
    delivery_id = delivery_rows.enqueue(conn, space, reaction, payload, time.time())
    _notify()
    return delivery_id


def _notify() -> None:
    for listener in list(_listeners):
        listener()


class TaskFacts(Protocol):
    """What an event needs of a task (a `TaskRecord`; named here, as task_rows imports this module)."""

    @property
    def task_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def space(self) -> str: ...
    @property
    def project(self) -> str: ...
    @property
    def release_version(self) -> str: ...
    @property
    def environment(self) -> str: ...
    @property
    def tenant(self) -> str | None: ...


class MachineFacts(Protocol):
    """What an event needs of a machine (a `Machine`)."""

    @property
    def space(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def environments(self) -> tuple[str, ...]: ...
    @property
    def roles(self) -> tuple[str, ...]: ...
    @property
    def tenants(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class _TaskRow:
    task_id: str
    kind: str
    space: str
    project: str
    release_version: str
    environment: str
    tenant: str | None


def task_queued(conn: sqlite3.Connection, task: TaskFacts) -> None:
    """A task was stored: a deployment records ``deploymentQueued`` (runbook runs record nothing)."""
    if task.kind == "deployment":
        _task_event(conn, "deploymentQueued", task, "queued", None)


def task_moving(conn: sqlite3.Connection, task_id: str, state: str, error: str | None) -> None:
    """A task's state is about to be saved as ``state``: record the change, if it is one."""
    row = conn.execute(
        "SELECT task_id, state, kind, space, project, release_version, environment, tenant FROM tasks"
        " WHERE task_id = ?",
        (task_id,),
    ).fetchone()
    if row is None or row["state"] == state or row["kind"] != "deployment" or state not in DEPLOYMENT_KINDS:
        return
    task = _TaskRow(
        row["task_id"],
        row["kind"],
        row["space"],
        row["project"],
        row["release_version"],
        row["environment"],
        row["tenant"],
    )
    _task_event(conn, DEPLOYMENT_KINDS[state], task, state, error)


def _task_event(conn: sqlite3.Connection, kind: str, task: TaskFacts, state: str, error: str | None) -> None:
    record(
        conn,
        kind,
        task.space,
        project=task.project,
        release=task.release_version,
        environments=[env for env in task.environment.split(",") if env],
        tenant=task.tenant,
        task_id=task.task_id,
        task_state=state,
        details={"error": error} if error else None,
    )


def machine_event(
    conn: sqlite3.Connection, kind: str, machine: MachineFacts, details: dict[str, Any] | None = None
) -> None:
    """An event about a machine: its environments and roles, and its tenant when it serves one."""
    record(
        conn,
        kind,
        machine.space,
        environments=machine.environments,
        tenant=machine.tenants[0] if len(machine.tenants) == 1 else None,
        machine=machine.name,
        roles=machine.roles,
        details={"mode": machine.mode, "tenants": list(machine.tenants), **(details or {})},
    )


def page(conn: sqlite3.Connection, space: str, since: int, kinds: Sequence[str], limit: int) -> list[Event]:
    """The space's events after ``since``, oldest first, at most ``limit``; only ``kinds`` if given."""
    query = "SELECT * FROM events WHERE (space = ? OR space IS NULL) AND seq > ?"
    params: list[Any] = [space, since]
    if kinds:
        query += f" AND kind IN ({', '.join('?' for _ in kinds)})"
        params.extend(kinds)
    rows = conn.execute(query + " ORDER BY seq LIMIT ?", (*params, limit))
    return [_from_row(row) for row in rows]


def _from_row(row: sqlite3.Row) -> Event:
    return Event(
        seq=row["seq"],
        kind=row["kind"],
        time=iso(row["time"]),
        space=row["space"],
        project_name=row["project"],
        release_version=row["release_version"],
        environment_names=tuple(json.loads(row["environments"])),
        tenant_name=row["tenant"],
        machine_name=row["machine"],
        task_id=row["task_id"],
        task_state=row["task_state"],
        roles=tuple(json.loads(row["roles"])),
        details=json.loads(row["details"]),
    )


def last_seq(conn: sqlite3.Connection) -> int:
    """The number of the latest event (0 when there is none)."""
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


def prune(conn: sqlite3.Connection, before: float, batch: int) -> int:
    """Delete at most ``batch`` events recorded before ``before`` and as many deliveries that
    ended before it (with their attempts); how many rows went. A pending delivery stays,
    however old: it carries its own copy of its event."""
    gone = conn.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE time < ? ORDER BY seq LIMIT ?)",
        (before, batch),
    ).rowcount
    ended = [
        (row[0],)
        for row in conn.execute(
            "SELECT delivery_id FROM deliveries WHERE state <> 'pending' AND finished_at < ?"
            " ORDER BY seq LIMIT ?",
            (before, batch),
        )
    ]
    conn.executemany("DELETE FROM delivery_attempts WHERE delivery_id = ?", ended)
    conn.executemany("DELETE FROM deliveries WHERE delivery_id = ?", ended)
    return int(gone) + len(ended)
