"""Copy a whole server from one database to another (``server-shim migrate``).

Both ends are opened (and so migrated to this server's schema) first: the tables and
columns are then the same on both sides. Tables go parents first (by their foreign keys),
in batches of `BATCH` rows, in one transaction on the target: a copy that fails leaves
the target as it was. The target must hold no server yet. Node rows and machine presence
are not copied: they describe running processes, not data. ``task_counts`` is not copied
either: the target's triggers count the tasks as they arrive, and the copy ends by counting
them again from the copied table (`task_counts.rebuild`), so the lists' totals are the
target's own whatever the source held. PostgreSQL's identity sequences are moved past the
copied keys, so that the next log line numbers on.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from server_shim.store import node_rows, task_counts
from server_shim.store.database import POSTGRESQL, Database
from tentacle.errors import Conflict

BATCH = 5000
SKIPPED = frozenset({"nodes", "machine_presence", "schema_migrations", "sqlite_sequence", "task_counts"})


def tables(conn: sqlite3.Connection) -> list[str]:
    """The source's tables, parents before the tables that refer to them."""
    names = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        if row[0] not in SKIPPED
    ]
    parents = {n: {r[2] for r in conn.execute(f"PRAGMA foreign_key_list({n})")} - {n} for n in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        ordered += ready or [n for n in names if n not in ordered]  # a cycle: keep the rest's order
    return ordered


def copy(source: Database, target: Database) -> dict[str, int]:
    """Copy every table; returns the rows copied per table. Closes both databases."""
    try:
        if target.sync(node_rows.holds_server):
            raise Conflict(f"{target.describe()} already holds a server: migrate into an empty database")
        order = source.sync(tables)
        return target.sync(_copy_all, source, order)
    finally:
        source.close()
        target.close()


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _page(conn: sqlite3.Connection, table: str, names: str, offset: int) -> list[tuple[Any, ...]]:
    query = f"SELECT {names} FROM {table} LIMIT ? OFFSET ?"  # noqa: S608 - the schema's own names
    return [tuple(row) for row in conn.execute(query, (BATCH, offset))]


def _copy_all(conn: Any, source: Database, order: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in order:
        columns = source.sync(_columns, table)
        names, marks = ", ".join(columns), ", ".join("?" * len(columns))
        insert = f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING"  # noqa: S608 - schema
        counts[table] = 0
        while rows := source.sync(_page, table, names, counts[table]):
            conn.executemany(insert, rows)
            counts[table] += len(rows)
    task_counts.rebuild(conn)
    if getattr(conn, "dialect", "") == POSTGRESQL:  # the next log line numbers after the copied ones
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('task_log', 'seq'),"
            " COALESCE((SELECT MAX(seq) FROM task_log), 0) + 1, false)"
        )
    return counts
