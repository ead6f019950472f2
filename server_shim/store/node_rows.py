"""Server nodes sharing one database: who is alive, who owns which task, who reaches which machine.

A node's row is its lease: it rewrites ``heartbeat`` every few seconds, and a node whose
heartbeat is older than `LEASE_SECONDS` (killed, frozen, cut off) is dead. Every queued or
running task names its ``owner``; only the owner drives it, and every snapshot it saves
says ``AND owner = me`` (`save_owned`): a node that lost its lease cannot write one more
step, so it cannot send one either (the snapshot is saved before actions are sent).
Another node claims the tasks of a dead, draining or stopped node with a compare-and-set
on ``owner`` (`claim`), and resumes them from the snapshot.

``machine_presence`` holds one row per (machine, node) link that is up: a polling
tentacle's websocket to that node, or a listening tentacle that answers that node's pings.
A machine is online while some live node holds a row for it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from server_shim.store import task_rows
from server_shim.store.task_rows import TaskRecord
from tentacle.errors import Conflict, NotFound

LEASE_SECONDS = 15.0
ACTIVE = ("queued", "running")


class LeaseLost(Conflict):
    """This node no longer owns the task (another node took it over)."""


class NodeNotFound(NotFound):
    """No node of that name."""


@dataclass(frozen=True)
class NodeRow:
    """One node as the database sees it."""

    name: str
    api_url: str
    polling_url: str
    started_at: float
    heartbeat: float
    state: str
    agents: int
    tasks: int
    schema_version: int

    def alive(self, now: float) -> bool:
        """Whether its lease holds."""
        return self.state != "stopped" and self.heartbeat > now - LEASE_SECONDS


def holds_server(conn: sqlite3.Connection) -> bool:
    """Whether the database already belongs to a server (it has an API key)."""
    return conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None


def register(conn: sqlite3.Connection, name: str, api_url: str, polling_url: str, version: int) -> None:
    """This node starts: its row (running, beating now), and no links left from a previous life."""
    now = time.time()
    conn.execute(
        "INSERT INTO nodes (name, api_url, polling_url, started_at, heartbeat, state, agents, tasks,"
        " schema_version) VALUES (?, ?, ?, ?, ?, 'running', 0, 0, ?) ON CONFLICT (name) DO UPDATE SET"
        " api_url = excluded.api_url, polling_url = excluded.polling_url, started_at = excluded.started_at,"
        " heartbeat = excluded.heartbeat, state = 'running', agents = 0, tasks = 0,"
        " schema_version = excluded.schema_version",
        (name, api_url, polling_url, now, now, version),
    )
    conn.execute("DELETE FROM machine_presence WHERE node = ?", (name,))


def beat(conn: sqlite3.Connection, name: str, agents: int) -> str:
    """Renew the lease and the figures; returns the node's state (``draining`` when asked to)."""
    owned = conn.execute(
        "SELECT COUNT(*) FROM tasks WHERE owner = ? AND state IN ('queued', 'running')", (name,)
    ).fetchone()[0]
    conn.execute(
        "UPDATE nodes SET heartbeat = ?, agents = ?, tasks = ? WHERE name = ?",
        (time.time(), agents, int(owned), name),
    )
    row = conn.execute("SELECT state FROM nodes WHERE name = ?", (name,)).fetchone()
    return "stopped" if row is None else str(row["state"])


def listing(conn: sqlite3.Connection) -> list[NodeRow]:
    """Every node, by name."""
    rows = conn.execute(
        "SELECT name, api_url, polling_url, started_at, heartbeat, state, agents, tasks, schema_version"
        " FROM nodes ORDER BY name"
    )
    return [NodeRow(*row) for row in rows]


def polling_urls(conn: sqlite3.Connection) -> list[str]:
    """The polling URLs of the live nodes (what a registering tentacle is told to keep)."""
    now = time.time()
    return sorted({n.polling_url for n in listing(conn) if n.alive(now)})


def set_state(conn: sqlite3.Connection, name: str, state: str) -> NodeRow:
    """Mark a node ``draining`` (it hands its tasks over and stops) or ``stopped``."""
    if conn.execute("UPDATE nodes SET state = ? WHERE name = ?", (state, name)).rowcount == 0:
        raise NodeNotFound(f"node {name!r} does not exist")
    return next(n for n in listing(conn) if n.name == name)


def release_all(conn: sqlite3.Connection, name: str) -> int:
    """A draining node lets go of its unfinished tasks and stops; returns how many it held."""
    released = conn.execute(
        "UPDATE tasks SET owner = NULL WHERE owner = ? AND state IN ('queued', 'running')", (name,)
    ).rowcount
    conn.execute("UPDATE nodes SET state = 'stopped' WHERE name = ?", (name,))
    conn.execute("DELETE FROM machine_presence WHERE node = ?", (name,))
    return int(released)


def claim_new(conn: sqlite3.Connection, task_ids: list[str], me: str) -> set[str]:
    """Own the tasks this node just created (unless another node was quicker, or this node is
    draining or stopped: then they stay for the running nodes to take)."""
    won = set()
    for task_id in task_ids:
        changed = conn.execute(
            "UPDATE tasks SET owner = ? WHERE task_id = ? AND owner IS NULL"
            " AND EXISTS (SELECT 1 FROM nodes WHERE name = ? AND state = 'running')",
            (me, task_id, me),
        ).rowcount
        if changed:
            won.add(task_id)
    return won


def orphans(conn: sqlite3.Connection, me: str) -> list[tuple[str, str | None]]:
    """(task id, owner) of unfinished tasks whose owner is gone, draining, stopped, or none."""
    now = time.time()
    live = {n.name for n in listing(conn) if n.alive(now) and n.state == "running"}
    rows = conn.execute(
        "SELECT task_id, owner FROM tasks WHERE state IN ('queued', 'running') ORDER BY created_at, task_id"
    )
    return [(r[0], r[1]) for r in rows if r[1] != me and r[1] not in live]


def claim(conn: sqlite3.Connection, task_id: str, owner: str | None, me: str) -> bool:
    """Take a task over from ``owner`` (compare-and-set: one node wins)."""
    if owner is None:
        return bool(
            conn.execute(
                "UPDATE tasks SET owner = ? WHERE task_id = ? AND owner IS NULL", (me, task_id)
            ).rowcount
        )
    changed = conn.execute("UPDATE tasks SET owner = ? WHERE task_id = ? AND owner = ?", (me, task_id, owner))
    return bool(changed.rowcount)


def save_owned(
    conn: sqlite3.Connection,
    task_id: str,
    me: str,
    state: str,
    error: str | None,
    coordinator: dict[str, Any],
) -> None:
    """`task_rows.save_progress` (its event included), only while this node owns the task;
    `LeaseLost` otherwise. The first UPDATE takes the row (PostgreSQL locks it until the commit),
    so that no other node can take the task between the check and the save."""
    owned = conn.execute(
        "UPDATE tasks SET owner = owner WHERE task_id = ? AND owner = ?", (task_id, me)
    ).rowcount
    if not owned:
        raise LeaseLost(f"task {task_id} is no longer owned by node {me!r}")
    task_rows.save_progress(conn, task_id, state, error, coordinator)


def present(conn: sqlite3.Connection, space: str, machine: str, node: str, up: bool) -> bool:
    """Record that ``node`` holds (or no longer holds) a link to the machine, seen now; returns
    whether the machine changed state across all nodes (its first link up, or its last one down).

    The machine's row is written first whatever its last-seen, so that on PostgreSQL two nodes
    changing the same machine's links take turns and each sees the other's row: a machine that
    connects to three nodes comes online once, and goes offline once, when its last link drops.
    """
    now = time.time()
    conn.execute(
        "UPDATE machines SET last_seen = CASE WHEN COALESCE(last_seen, 0) < ? THEN ? ELSE last_seen END"
        " WHERE space = ? AND name = ?",
        (now, now, space, machine),
    )
    if up:
        changed = conn.execute(
            "INSERT INTO machine_presence (space, machine, node, since) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (space, machine, node) DO NOTHING",
            (space, machine, node, now),
        ).rowcount
    else:
        changed = conn.execute(
            "DELETE FROM machine_presence WHERE space = ? AND machine = ? AND node = ?",
            (space, machine, node),
        ).rowcount
    others = conn.execute(
        "SELECT 1 FROM machine_presence WHERE space = ? AND machine = ? AND node <> ? LIMIT 1",
        (space, machine, node),
    ).fetchone()
    return changed == 1 and others is None


def take_unfinished(conn: sqlite3.Connection, me: str) -> list[TaskRecord]:
    """A starting node's tasks: those it owned before, and those nobody alive owns (claimed now)."""
    mine = [row[0] for row in conn.execute(
        "SELECT task_id FROM tasks WHERE owner = ? AND state IN ('queued', 'running')", (me,)
    )]  # fmt: skip
    claimed = [task_id for task_id, owner in orphans(conn, me) if claim(conn, task_id, owner, me)]
    records = [task_rows.get(conn, task_id) for task_id in {*mine, *claimed}]
    return sorted(records, key=lambda r: (r.created_at, r.task_id))


def ask_cancel(conn: sqlite3.Connection, task_id: str, reason: str) -> None:
    """Leave a cancel for the node that owns the task (it acts on it at its next beat)."""
    conn.execute(
        "UPDATE tasks SET cancel_reason = COALESCE(cancel_reason, ?) WHERE task_id = ?", (reason, task_id)
    )


def cancels_for(conn: sqlite3.Connection, me: str) -> list[tuple[str, str]]:
    """(task id, reason) of the cancels other nodes left for this node's tasks; taken once."""
    rows = conn.execute(
        "SELECT task_id, cancel_reason FROM tasks WHERE owner = ? AND cancel_reason IS NOT NULL"
        " AND state IN ('queued', 'running')",
        (me,),
    ).fetchall()
    for row in rows:
        conn.execute("UPDATE tasks SET cancel_reason = NULL WHERE task_id = ?", (row[0],))
    return [(str(row[0]), str(row[1])) for row in rows]


def owner_of(conn: sqlite3.Connection, task_id: str) -> str | None:
    """The node that owns the task now (None: nobody yet)."""
    row = conn.execute("SELECT owner FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return None if row is None else row[0]
