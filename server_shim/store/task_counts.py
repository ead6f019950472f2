"""How many tasks each (space, project, state) has: what a task list's totalCount sums.

How it works. ``task_counts`` holds one row per (space, project, state) with its number of
tasks, ``n``. Triggers on ``tasks`` (the migration "task_counts" in
server_shim.store.database) keep it in the transaction that writes the task: an insert adds
1 to its row, a delete takes 1 away, and an update that moves a task to another state (or
project, or space) takes 1 from the old row and adds 1 to the new one. Each change is an
upsert that adds to ``n`` in the database (``n = n + 1``): nothing is read into Python and
written back, so two PostgreSQL nodes writing at once queue on the row and both count.
PostgreSQL's trigger first takes the advisory lock that recording an event takes
(`server_shim.store.dialects.EVENT_ORDER_LOCK`, held to the commit): without it, a node's
batch that moved a runbook run's task (count rows) and then a deployment's (the event lock)
could wait on another node's batch that did the two the other way round, a deadlock. With
it, one transaction at a time holds count rows, as one at a time already recorded events.

Why triggers rather than a line next to each write: every writer counts, including the
ones that write tasks with their own SQL (the benchmarks, ``migrate``, a future
clean-up that deletes old tasks); no code path can forget.

A count is read with `total` (the SQL for the list's filters); `rebuild` counts the table
again (after ``migrate`` copied it) and `drift` names the rows that differ from the table
(none, unless someone disabled the triggers).
"""

from __future__ import annotations

import sqlite3
from typing import Any

# Added to a count's sum so that it is an integer on both databases (PostgreSQL's SUM of a
# BIGINT is a NUMERIC) and 0 when no row matches.
_SUM = "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM task_counts WHERE "


def total(space: str, state: str | None, project: str | None) -> tuple[str, tuple[Any, ...]]:
    """The SQL (and its parameters) of how many tasks of ``space`` match the filters.

    At most (projects x states) rows are summed, an index range of the primary key: the
    same whether the space holds a thousand tasks or a million.
    """
    where, params = ["space = ?"], [space]
    if project:
        where.append("project = ?")
        params.append(project)
    if state:
        where.append("state = ?")
        params.append(state)
    return _SUM + " AND ".join(where), tuple(params)


def count(conn: sqlite3.Connection, space: str, state: str | None = None, project: str | None = None) -> int:
    """How many tasks of ``space`` match the filters, from the counts."""
    sql, params = total(space, state, project)
    return int(conn.execute(sql, params).fetchone()[0])


_TRUTH = "SELECT space, project, state, COUNT(*) FROM tasks GROUP BY space, project, state"


def rebuild(conn: sqlite3.Connection) -> int:
    """Count the tasks table again into ``task_counts`` (in the caller's transaction); returns the rows."""
    conn.execute("DELETE FROM task_counts")
    conn.execute(f"INSERT INTO task_counts (space, project, state, n) {_TRUTH}")
    return int(conn.execute("SELECT COUNT(*) FROM task_counts").fetchone()[0])


def drift(conn: sqlite3.Connection) -> list[tuple[str, str, str, int, int]]:
    """(space, project, state, counted, actual) of every row whose count differs from the table."""
    actual = {(r[0], r[1], r[2]): int(r[3]) for r in conn.execute(_TRUTH)}
    counted = {
        (r[0], r[1], r[2]): int(r[3])
        for r in conn.execute("SELECT space, project, state, n FROM task_counts")
    }
    keys = sorted(set(actual) | set(counted))
    return [
        (*key, counted.get(key, 0), actual.get(key, 0))
        for key in keys
        if counted.get(key, 0) != actual.get(key, 0)
    ]
