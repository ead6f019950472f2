"""Tasks and their logs in the database.

A task row holds everything needed to carry on after a restart: the plan of every
target (`plans`) and the coordinator's snapshot (`coordinator`), rewritten after
every event. Log lines are keyed by (task, machine, the machine's own sequence
number), so a line delivered twice (a retried status call) is stored once; the
task-wide ``seq`` is what ``log/v1?since=`` pages by. They are written by
`server_shim.store.log_rows` (in batches, with a limit per target) and read here.
Sensitive values in the stored plans are sealed (`server_shim.store.sealing`) and opened
as a task is read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from server_shim.store import events, sealing, task_counts
from tentacle.errors import NotFound
from tentacle.protocol.plan import Plan

FINAL_STATES = ("success", "failed", "cancelled")


class TaskNotFound(NotFound):
    """No task with that id."""


@dataclass(frozen=True)
class TaskRecord:
    """One task row."""

    task_id: str
    space: str
    kind: str
    project: str
    release_version: str
    runbook: str | None
    environment: str
    state: str
    error: str | None
    created_at: float
    finished_at: float | None
    plans: dict[str, Plan]
    coordinator: dict[str, Any]
    tenant: str | None = None
    run_at: float | None = None  # not started before (epoch seconds)
    no_run_after: float | None = None  # cancelled when still queued after this

    @functools.cached_property
    def machine_keys(self) -> frozenset[tuple[str, str]]:
        """(space, name) of every target: names are unique within a space only (made once)."""
        return frozenset((self.space, name) for name in self.plans)

    @classmethod
    def from_row(cls, row: sqlite3.Row, conn: sqlite3.Connection) -> TaskRecord:
        """Build from a ``tasks`` row read on ``conn`` (one without a ``plans`` column gets no plans);
        columns that are not fields (the owning node's, say) are left out."""
        values = {key: row[key] for key in row.keys() if key in _FIELDS}  # noqa: SIM118 - a row iterates values
        plans = json.loads(values["plans"]) if "plans" in values else {}
        values["plans"] = {name: Plan.from_json(sealing.unseal(conn, p)) for name, p in plans.items()}
        values["coordinator"] = json.loads(values["coordinator"])
        return cls(**values)


_FIELDS = frozenset(field.name for field in dataclasses.fields(TaskRecord))


def insert(conn: sqlite3.Connection, record: TaskRecord) -> None:
    """Store a new (queued) task."""
    if any(plan.sensitive_values() for plan in record.plans.values()):
        plans = json.dumps({name: sealing.seal(conn, plan.to_json()) for name, plan in record.plans.items()})
    else:  # nothing to seal: the wire form (`Plan.to_json`) in one pass
        plans = msgspec.json.encode(record.plans).decode()
    conn.execute(
        "INSERT INTO tasks (task_id, space, kind, project, release_version, runbook, environment, state,"
        " error, created_at, finished_at, plans, coordinator, tenant, run_at, no_run_after)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.task_id,
            record.space,
            record.kind,
            record.project,
            record.release_version,
            record.runbook,
            record.environment,
            record.state,
            record.error,
            record.created_at,
            record.finished_at,
            plans,
            json.dumps(record.coordinator),
            record.tenant,
            record.run_at,
            record.no_run_after,
        ),
    )
    events.task_queued(conn, record)


# Every column but the plans: what reading a task needs (5,000 plans take 0.2 s to parse).
_HEADER = (
    "SELECT task_id, space, kind, project, release_version, runbook, environment, state, error,"
    " created_at, finished_at, coordinator, tenant, run_at, no_run_after FROM tasks"
)
_GET_HEADER = _HEADER + " WHERE task_id = ?"
MAX_TASK_IDS = 1000


def get(conn: sqlite3.Connection, task_id: str, *, with_plans: bool = True) -> TaskRecord:
    """The task, or TaskNotFound; ``with_plans=False`` leaves `plans` empty, for readers."""
    query = "SELECT * FROM tasks WHERE task_id = ?" if with_plans else _GET_HEADER
    row = conn.execute(query, (task_id,)).fetchone()
    if row is None:
        raise TaskNotFound(f"task {task_id!r} does not exist")
    return TaskRecord.from_row(row, conn)


def unfinished(conn: sqlite3.Connection) -> list[TaskRecord]:
    """Queued and running tasks, oldest first (what a starting server picks up)."""
    rows = conn.execute(
        "SELECT * FROM tasks WHERE state IN ('queued', 'running') ORDER BY created_at, task_id"
    )
    return [TaskRecord.from_row(row, conn) for row in rows]


def save_progress(
    conn: sqlite3.Connection, task_id: str, state: str, error: str | None, coordinator: dict[str, Any]
) -> None:
    """Record the coordinator's snapshot and the task state it implies."""
    finished = time.time() if state in FINAL_STATES else None
    events.task_moving(conn, task_id, state, error)
    conn.execute(
        "UPDATE tasks SET state = ?, error = ?, coordinator = ?, finished_at = COALESCE(finished_at, ?)"
        " WHERE task_id = ?",
        (state, error, json.dumps(coordinator), finished, task_id),
    )


def read_log(conn: sqlite3.Connection, task_id: str, since: int, limit: int = 1000) -> list[dict[str, Any]]:
    """Log lines after `since`, in order."""
    rows = conn.execute(
        "SELECT seq, time, machine, stream, step, text FROM task_log WHERE task_id = ? AND seq > ?"
        " ORDER BY seq LIMIT ?",
        (task_id, since, limit),
    )
    return [
        {
            "seq": r["seq"],
            "time": r["time"],
            "machineName": r["machine"],
            "stream": r["stream"],
            "step": r["step"],
            "text": r["text"],
        }
        for r in rows
    ]


def get_many(conn: sqlite3.Connection, space: str, task_ids: Sequence[str]) -> list[TaskRecord]:
    """The tasks of `space` among `task_ids` (at most `MAX_TASK_IDS`), without plans, newest first.

    Ids of no task, or of another space's, are left out: the caller tells which are missing.
    """
    wanted = list(dict.fromkeys(task_ids))[:MAX_TASK_IDS]
    if not wanted:
        return []
    marks = ", ".join("?" * len(wanted))
    rows = conn.execute(
        f"{_HEADER} WHERE space = ? AND task_id IN ({marks}) ORDER BY created_at DESC, task_id",
        (space, *wanted),
    )
    return [TaskRecord.from_row(row, conn) for row in rows]


def page(conn: sqlite3.Connection, space: str, skip: int, take: int) -> tuple[int, list[TaskRecord]]:
    """(how many tasks `space` has, the `take` newest after skipping `skip`), without plans."""
    total = task_counts.count(conn, space)
    rows = conn.execute(
        f"{_HEADER} WHERE space = ? ORDER BY created_at DESC, task_id LIMIT ? OFFSET ?",
        (space, take, skip),
    )
    return int(total), [TaskRecord.from_row(row, conn) for row in rows]
