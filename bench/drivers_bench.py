"""drivers: psycopg 3 (blocking, on the database thread) against asyncpg, on this server's work.

Two parts of the workload, on one throwaway PostgreSQL cluster with the server's schema:
- log append: batches of 1,000 task log lines, one transaction each (what `LogSink` writes);
- create-deployment: one transaction that reads the project, the release and the target
  machines, then inserts the task row with every target's plan (20 targets, ~40 KB).
psycopg runs each as the server does, ``Database.sync(fn)`` (``?`` placeholders, rows by
name); asyncpg runs the same SQL natively (``$n``, its own protocol) from an event loop.
Figures: milliseconds per operation and client CPU per operation. No target: the figures
say which driver to use (README, "Choosing the PostgreSQL driver").
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg

from rigs.instances import print_table
from rigs.pgcluster import Cluster
from server_shim.store.database import Database

LINES = 1_000
PLAN = json.dumps({"steps": [{"name": f"step {i}", "script": "x" * 100} for i in range(15)]})
TASK_SQL = (
    "INSERT INTO tasks (task_id, space, kind, project, release_version, runbook, environment, state,"
    " created_at, plans, coordinator) VALUES (?, 'Default', 'deployment', 'Shop', '1.0.0', NULL, 'Dev',"
    " 'queued', ?, ?, '{}')"
)
LOG_SQL = (
    "INSERT INTO task_log (task_id, machine, machine_seq, time, stream, step, text)"
    " VALUES (?, ?, ?, ?, 'stdout', 'Deploy', ?) ON CONFLICT (task_id, machine, machine_seq) DO NOTHING"
)
READS = (
    ("SELECT document FROM projects WHERE space = ? AND name = ?", ("Default", "Shop")),
    (
        "SELECT * FROM releases WHERE space = ? AND project = ? AND lower(version) = lower(?)",
        ("Default", "Shop", "1.0.0"),
    ),
    ("SELECT * FROM machines WHERE space = ? AND environments LIKE ? ORDER BY name", ("Default", '%"Dev"%')),
)


def _dollars(sql: str) -> str:
    from server_shim.store.pg_connection import placeholders

    return placeholders(sql)


def _seed(db: Database) -> None:
    db.sync(
        lambda c: c.execute(
            "INSERT INTO projects (space, name, document, updated_at) VALUES ('Default', 'Shop', ?, 0)",
            (PLAN,),
        )
    )
    release = (
        "INSERT INTO releases (space, project, version, process, packages, created_at)"
        " VALUES ('Default', 'Shop', '1.0.0', ?, '{}', 0)"
    )
    db.sync(lambda c: c.execute(release, (PLAN,)))


def _create(conn: Any, task_id: str) -> None:
    for sql, params in READS:
        conn.execute(sql, params).fetchall()
    conn.execute(TASK_SQL, (task_id, time.time(), json.dumps({f"web-{i:02}": PLAN for i in range(20)})))


def _log(conn: Any, task_id: str, first: int) -> None:
    rows = [
        (task_id, "web-01", first + i, time.time(), f"line {first + i} of the deployment")
        for i in range(LINES)
    ]
    conn.executemany(LOG_SQL, rows)


def run_psycopg(url: str, rounds: int) -> dict[str, float]:
    """The server's own path."""
    db = Database(url)
    try:
        _seed(db)
        figures: dict[str, float] = {}
        for name in ("create", "log"):
            cpu, start = time.process_time(), time.perf_counter()
            for i in range(rounds):
                if name == "create":
                    db.sync(_create, f"P-{i}")
                else:
                    db.sync(_log, "P-0", i * LINES)
            figures[f"{name}_ms"] = 1000 * (time.perf_counter() - start) / rounds
            figures[f"{name}_cpu_ms"] = 1000 * (time.process_time() - cpu) / rounds
        return figures
    finally:
        db.close()


async def run_asyncpg(url: str, rounds: int) -> dict[str, float]:
    """The same SQL through asyncpg."""
    conn = await asyncpg.connect(url)
    try:
        reads = [(_dollars(sql), params) for sql, params in READS]
        task_sql, log_sql = _dollars(TASK_SQL), _dollars(LOG_SQL)

        async def create(i: int) -> None:
            async with conn.transaction():
                for sql, params in reads:
                    await conn.fetch(sql, *params)
                plans = json.dumps({f"web-{n:02}": PLAN for n in range(20)})
                await conn.execute(task_sql, f"A-{i}", time.time(), plans)

        async def log(i: int) -> None:
            rows = [
                ("A-0", "web-01", i * LINES + n, time.time(), f"line {n} of the deployment")
                for n in range(LINES)
            ]
            async with conn.transaction():
                await conn.executemany(log_sql, rows)

        figures: dict[str, float] = {}
        for name, work in (("create", create), ("log", log)):
            cpu, start = time.process_time(), time.perf_counter()
            for i in range(rounds):
                await work(i)
            figures[f"{name}_ms"] = 1000 * (time.perf_counter() - start) / rounds
            figures[f"{name}_cpu_ms"] = 1000 * (time.process_time() - cpu) / rounds
        return figures
    finally:
        await conn.close()


def main(quick: bool) -> dict[str, Any]:
    """Both drivers on one cluster."""
    rounds = 50 if quick else 300
    cluster = Cluster.start()
    try:
        psycopg_figures = run_psycopg(cluster.create_database("psycopg"), rounds)
        asyncpg_url = cluster.create_database("asyncpg")
        seeded = Database(asyncpg_url)  # the schema and the project
        _seed(seeded)
        seeded.close()
        asyncpg_figures = asyncio.run(run_asyncpg(asyncpg_url, rounds))
    finally:
        cluster.stop()
    figures = {
        "psycopg": {k: round(v, 2) for k, v in psycopg_figures.items()},
        "asyncpg": {k: round(v, 2) for k, v in asyncpg_figures.items()},
    }
    rows = [
        (part, f"{figures['psycopg'][part]}", f"{figures['asyncpg'][part]}", "")
        for part in ("create_ms", "create_cpu_ms", "log_ms", "log_cpu_ms")
    ]
    print_table("drivers: psycopg 3 (as the server runs it) vs asyncpg, per operation", rows)
    ratio = figures["asyncpg"]["create_ms"] / figures["psycopg"]["create_ms"]
    return {"benchmark": "drivers", "figures": figures, "ratio": round(ratio, 2)}
