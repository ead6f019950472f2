"""Lists whose JSON the database builds: tasks, releases, projects, machines, a task's log.

How it works. A list is a `Listing`: its JSON fields (each a key, an SQL expression and a
kind), the page query (filters, order, LIMIT/OFFSET or a keyset cursor) and the count.
`page_json` sends one statement that returns the whole answer, ``{"items": [...],
"totalCount": N}``, as one text value: PostgreSQL builds it with ``json_agg`` of the page's
rows as records and ``json_build_object``, SQLite with ``json_object`` and
``json_group_array``; the API writes those bytes as they come. `page_python` reads the
same rows and builds the same answer in Python (the way lists were served before, kept as
the reference the tests compare with and the baseline of ``bench lists``).

The two dialects agree on everything but the JSON functions, the cast of a JSON text
column and the date format, which `_Dialect` names. Times are epoch seconds rounded to the
millisecond (SQLite writes a real in JSON with 15 digits: an unrounded one would differ
from Python's), or ISO 8601 UTC to the second where the API shows a date (``lastSeen``).
Tasks page by keyset: ``after=TASKID`` continues below that task in (createdAt, taskId)
order, an index range whatever the depth; ``skip`` still works, at the cost of the rows
it skips. A task list's totalCount sums the few rows of ``task_counts`` that match its
filters (`server_shim.store.task_counts`), not the tasks: its cost does not grow with them.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from server_shim.store import task_counts
from server_shim.store.database import POSTGRESQL, dialect

Kind = Literal["value", "json", "epoch", "iso"]
ONLINE_WITHIN = 15.0  # seconds: a node whose heartbeat is older holds no machine online


@dataclass(frozen=True)
class Field:
    """One key of an item: its SQL expression and how the value is shown."""

    key: str
    sql: str
    kind: Kind = "value"


@dataclass(frozen=True)
class Query:
    """One page of one list: the rows' SQL (without the item fields) and its parameters."""

    source: str  # FROM ... WHERE ... ORDER BY ... LIMIT ? OFFSET ?
    params: tuple[Any, ...]
    count: str  # SELECT COUNT(*) ...
    count_params: tuple[Any, ...]
    order: str  # the page's order, for json_agg


@dataclass(frozen=True)
class _Dialect:
    obj: str
    agg: str
    empty: str
    json_text: str
    epoch: str
    iso: str


_DIALECTS = {
    "sqlite": _Dialect(
        obj="json_object({pairs})",
        agg="json_group_array({item})",
        empty="json_array()",
        json_text="json({0})",
        epoch="ROUND({0}, 3)",
        iso="strftime('%Y-%m-%dT%H:%M:%SZ', {0}, 'unixepoch')",
    ),
    POSTGRESQL: _Dialect(
        obj="json_build_object({pairs})",
        agg="json_agg({item} ORDER BY {order})",
        empty="'[]'::json",
        json_text="({0})::json",
        epoch="ROUND(({0})::numeric, 3)::double precision",
        iso="to_char(to_timestamp({0}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
    ),
}


def _value_sql(d: _Dialect, field: Field) -> str:
    if field.kind == "json":
        return d.json_text.format(field.sql)
    if field.kind == "epoch":
        return d.epoch.format(field.sql)
    if field.kind == "iso":
        return d.iso.format(field.sql)
    return field.sql


@functools.lru_cache(maxsize=256)
def _json_statement(name: str, fields: tuple[Field, ...], source: str, count: str, order: str) -> str:
    """The one statement that returns the answer as JSON text (cached per list and filter shape).

    The count's parameters come first in both, then the page's.
    """
    d = _DIALECTS[name]
    if name == POSTGRESQL:
        return _pg_statement(d, fields, source, count, order)
    pairs = ", ".join(f"'{f.key}', {_value_sql(d, f)}" for f in fields)
    item = d.obj.format(pairs=pairs)
    items = f"COALESCE({d.agg.format(item=item, order=order)}, {d.empty})"
    whole = d.obj.format(pairs=f"'items', {items}, 'totalCount', ({count})")
    return f"SELECT {whole} FROM (SELECT * {source}) AS page"  # noqa: S608 - our own fragments


def _pg_statement(d: _Dialect, fields: tuple[Field, ...], source: str, count: str, order: str) -> str:
    """PostgreSQL: ``json_agg`` of the page's rows as records whose columns are the keys.

    A record becomes compact JSON (``{"a":1}``) in one pass, where ``json_build_object`` per row
    takes a third longer and writes ``{"a" : 1}``. The records are aggregated from a subquery
    sorted after its LIMIT, in that order.
    """
    columns = ", ".join(f'{_value_sql(d, f)} AS "{f.key}"' for f in fields)
    rows = f"SELECT {columns} FROM (SELECT * {source}) AS page ORDER BY {order}"  # noqa: S608 - ours
    items = f"COALESCE((SELECT json_agg(item) FROM ({rows}) AS item), {d.empty})"  # noqa: S608 - ours
    return (
        f"WITH counted(n) AS ({count})"  # noqa: S608 - our own fragments
        f" SELECT json_build_object('items', {items}, 'totalCount', (SELECT n FROM counted))::text"
    )


def page_json(conn: sqlite3.Connection, fields: Sequence[Field], query: Query) -> bytes:
    """The answer ``{"items", "totalCount"}`` as the database wrote it."""
    statement = _json_statement(dialect(conn), tuple(fields), query.source, query.count, query.order)
    row = conn.execute(statement, (*query.count_params, *query.params)).fetchone()
    return str(row[0]).encode()


def page_python(conn: sqlite3.Connection, fields: Sequence[Field], query: Query) -> bytes:
    """The same answer, with the rows read and serialized here."""
    d = _DIALECTS[dialect(conn)]
    columns = ", ".join(f"{_raw_sql(d, f)} AS c{i}" for i, f in enumerate(fields))
    statement = f"SELECT {columns} FROM (SELECT * {query.source}) AS page ORDER BY {query.order}"  # noqa: S608
    rows = conn.execute(statement, query.params)
    items = [{f.key: _shown(f.kind, row[i]) for i, f in enumerate(fields)} for row in rows]
    total = conn.execute(query.count, query.count_params).fetchone()[0]
    return msgspec.json.encode({"items": items, "totalCount": int(total)})


def _raw_sql(d: _Dialect, field: Field) -> str:
    return d.epoch.format(field.sql) if field.kind == "epoch" else field.sql


def _shown(kind: Kind, value: Any) -> Any:
    if value is None:
        return None
    if kind == "json":
        return json.loads(value)
    if kind == "iso":
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    return value


# --- the lists ---------------------------------------------------------------------------

TASK_FIELDS = (
    Field("taskId", "task_id"),
    Field("state", "state"),
    Field("kind", "kind"),
    Field("projectName", "project"),
    Field("releaseVersion", "NULLIF(release_version, '')"),
    Field("runbookName", "runbook"),
    Field("environment", "environment"),
    Field("tenantName", "tenant"),
    Field("createdAt", "created_at", "epoch"),
    Field("finishedAt", "finished_at", "epoch"),
    Field("error", "error"),
    Field("node", "owner"),
)


def tasks_query(
    space: str, skip: int, take: int, state: str | None, project: str | None, after: str | None
) -> Query:
    """Newest first; ``after`` a task id continues below it (keyset), ``skip`` then skips more."""
    where, params = ["space = ?"], [space]
    if state:
        where.append("state = ?")
        params.append(state)
    if project:
        where.append("project = ?")
        params.append(project)
    count, counted = task_counts.total(space, state, project)
    if after:
        where.append("(created_at, task_id) < (SELECT created_at, task_id FROM tasks WHERE task_id = ?)")
        params.append(after)
    order = "created_at DESC, task_id DESC"
    source = f"FROM tasks WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ? OFFSET ?"
    return Query(source, (*params, take, skip), count, counted, order)


RELEASE_FIELDS = (
    Field("projectName", "project"),
    Field("version", "version"),
    Field("channelName", "channel"),
    Field("createdAt", "created_at", "epoch"),
)


def releases_query(space: str, project: str | None, skip: int, take: int) -> Query:
    """Newest first, of one project or of the space."""
    where, params = "space = ?", [space]
    if project:
        where, params = "space = ? AND project = ?", [space, project]
    order = "created_at DESC, project, version"
    source = f"FROM releases WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
    count = f"SELECT COUNT(*) FROM releases WHERE {where}"  # noqa: S608 - fixed
    return Query(source, (*params, take, skip), count, tuple(params), order)


PROJECT_FIELDS = (Field("name", "name"), Field("updatedAt", "updated_at", "epoch"))


def projects_query(space: str, skip: int, take: int) -> Query:
    """By name."""
    source = "FROM projects WHERE space = ? ORDER BY name LIMIT ? OFFSET ?"
    return Query(
        source, (space, take, skip), "SELECT COUNT(*) FROM projects WHERE space = ?", (space,), "name"
    )


MACHINE_FIELDS = (
    Field("name", "name"),
    Field("thumbprint", "thumbprint"),
    Field("mode", "mode"),
    Field("endpoint", "endpoint"),
    Field("environments", "environments", "json"),
    Field("roles", "roles", "json"),
    Field("status", "status"),
    Field("lastSeen", "last_seen", "iso"),
    Field("space", "space"),
    Field("tenants", "tenants", "json"),
    Field("tenantTags", "tenant_tags", "json"),
    Field("tenantedDeployment", "tenanted_deployment"),
)


def machines_query(space: str, skip: int, take: int | None, now: float) -> Query:
    """By name, each online when any live node holds a link to it (`machine_presence`)."""
    status = (
        "CASE WHEN EXISTS (SELECT 1 FROM machine_presence p JOIN nodes n ON n.name = p.node"
        " WHERE p.space = m.space AND p.machine = m.name AND n.heartbeat > ? AND n.state <> 'stopped')"
        " THEN 'online' ELSE 'offline' END AS status"
    )
    source = (
        f"FROM (SELECT m.*, {status} FROM machines m WHERE m.space = ?) AS m"  # noqa: S608 - fixed
        " ORDER BY name LIMIT ? OFFSET ?"
    )
    limit = take if take is not None else 2**62  # every machine unless a page is asked for
    count = "SELECT COUNT(*) FROM machines WHERE space = ?"
    return Query(source, (now - ONLINE_WITHIN, space, limit, skip), count, (space,), "name")


LOG_FIELDS = (
    Field("seq", "seq"),
    Field("time", "time", "epoch"),
    Field("machineName", "machine"),
    Field("stream", "stream"),
    Field("step", "step"),
    Field("text", "text"),
)


def log_query(task_id: str, since: int, take: int) -> Query:
    """A task's lines after ``since``, in order; the count is every line of the task."""
    source = "FROM task_log WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?"
    count = "SELECT COUNT(*) FROM task_log WHERE task_id = ?"
    return Query(source, (task_id, since, take), count, (task_id,), "seq")
