"""lists: 100-task pages built as JSON by the database against rows serialized in Python.

A real server (``python -m server_shim run``) on each backend, SQLite and PostgreSQL (a
throwaway cluster), is measured as its tasks table grows: 10,000 tasks, then 100,000 (the
issue's size), then 1,000,000 (``--quick``: 10,000 only). At each size five client threads,
each with one kept-alive TLS connection, send the same number of requests of each kind:

- ``db``: ``GET /api/Default/tasks/v1?take=100&skip=N`` (N random in 0-1,000, the same pages
  at every size, so that only the table grows), the answer built by the database;
- ``python``: the same pages with ``render=python`` (the rows read and serialized in the
  server's Python);
- ``keyset``: ``after=TASKID`` at a random depth of the whole table, database-built;
- ``take1``: ``take=1``, what a list request costs with (almost) no rows to serialize;
- ``spaces``: ``GET /api/spaces``, the cheapest authenticated JSON route: the ceiling.

Figures per kind: requests per second, the server's CPU per request (utime + stime from /proc)
and, on PostgreSQL, the database processes' CPU per request (where the JSON is built). The
tasks are written by the database itself (one INSERT ... SELECT per 100,000 tasks; the
triggers count them), and the time that took is reported. Target (the issue's): at
100,000 tasks, at least twice the requests per second and five times less server CPU per
request than the Python path, on both backends. ``flat``: the database-built page costs no
more CPU at 1,000,000 tasks than at 10,000 (within the run's noise, x1.5).
"""

from __future__ import annotations

import http.client
import os
import random
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rigs.instances import Server, print_table, proc_stats
from rigs.pgcluster import Cluster
from server_shim import server_config
from server_shim.store.database import Database
from tentacle.common.paths import resolve

CONCURRENCY = 5
PAGE = 100
MAX_SKIP = 1000
CHUNK = 100_000
SIZES, QUICK_SIZES = (10_000, 100_000, 1_000_000), (10_000,)
REQUESTS, QUICK_REQUESTS = 1000, 300
KINDS = ("db", "python", "keyset", "take1", "spaces")
_COORDINATOR = '{"state": "success", "targets": {"web-01": {"phase": "done"}}}'
# Finished tasks as a deployment leaves them; one statement writes a chunk (both dialects).
_POPULATE = (
    "WITH RECURSIVE seq(n) AS (SELECT CAST(? AS BIGINT) UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < ?)"
    " INSERT INTO tasks (task_id, space, kind, project, release_version, runbook, environment,"
    " state, error, created_at, finished_at, plans, coordinator)"
    " SELECT 'ServerTasks-' || n, 'Default', 'deployment', 'Project' || (n % 20), '1.0.' || (n % 50),"
    " NULL, 'Prod', CASE n % 3 WHEN 0 THEN 'success' WHEN 1 THEN 'failed' ELSE 'cancelled' END,"
    " CASE WHEN n % 3 = 1 THEN 'step failed' END, 1733000000.0 + n * 1.5, 1733000010.0 + n * 1.5,"
    " '{}', ? FROM seq"
)


def populate(location: Path | str, start: int, end: int) -> float:
    """Tasks ``start`` to ``end - 1``, ``CHUNK`` to a transaction; returns the seconds it took."""
    began = time.perf_counter()
    db = Database(location)
    try:
        for low in range(start, end, CHUNK):
            db.sync(lambda conn, low=low: conn.execute(_POPULATE, (low, min(end, low + CHUNK), _COORDINATOR)))
        if db.dialect == "postgresql":  # what autovacuum does soon after a load: plans know the sizes
            db.conn.execute("VACUUM ANALYZE tasks")
            db.conn.execute("VACUUM ANALYZE task_counts")
    finally:
        db.close()
    return time.perf_counter() - began


def _client(server: Server, paths: list[str], answers: list[int]) -> None:
    ctx = ssl.create_default_context(cafile=str(server.home / server_config.CA_CERT))
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", server.api_port, context=ctx, timeout=60)
    headers = {"X-Api-Key": server.admin_key()}
    try:
        for path in paths:
            conn.request("GET", path, headers=headers)
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{path}: {answer.status} {body[:200]!r}")
            answers.append(len(body))
    finally:
        conn.close()


def _paths(kind: str, tasks: int, requests: int) -> list[str]:
    chooser = random.Random(7)
    base = f"/api/Default/tasks/v1?take={PAGE}"
    if kind == "spaces":
        return ["/api/spaces"] * requests
    if kind == "take1":
        return [f"/api/Default/tasks/v1?take=1&skip={chooser.randrange(MAX_SKIP)}" for _ in range(requests)]
    if kind == "keyset":
        return [f"{base}&after=ServerTasks-{chooser.randrange(PAGE, tasks)}" for _ in range(requests)]
    suffix = "&render=python" if kind == "python" else ""
    return [f"{base}&skip={chooser.randrange(MAX_SKIP)}{suffix}" for _ in range(requests)]


def _database_cpu(cluster: Cluster | None) -> float:
    """CPU seconds of the PostgreSQL cluster's processes (0 for SQLite, which runs in the server)."""
    if cluster is None:
        return 0.0
    postmaster = int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])
    total = proc_stats(postmaster).cpu_seconds
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == postmaster:
                    total += proc_stats(int(entry)).cpu_seconds
            except (OSError, ValueError):  # a process that ended meanwhile
                continue
    return total


def measure(server: Server, cluster: Cluster | None, paths: list[str]) -> dict[str, float]:
    """Requests per second, server and database CPU ms per request, body bytes, for ``paths``."""
    _client(server, paths[:20], [])  # warm: connections, prepared statements, caches
    shares = [paths[i::CONCURRENCY] for i in range(CONCURRENCY)]
    answers: list[int] = []
    cpu_before, db_before = server.stats().cpu_seconds, _database_cpu(cluster)
    start = time.perf_counter()
    threads = [threading.Thread(target=_client, args=(server, share, answers)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    cpu, db_cpu = server.stats().cpu_seconds - cpu_before, _database_cpu(cluster) - db_before
    assert len(answers) == len(paths)
    count = len(paths)
    return {
        "rps": round(count / elapsed, 1),
        "cpu_ms": round(1000 * cpu / count, 3),
        "db_cpu_ms": round(1000 * db_cpu / count, 3),
        "bytes": round(sum(answers) / count),
    }


def one_size(server: Server, cluster: Cluster | None, tasks: int, requests: int) -> dict[str, Any]:
    """Every kind of request against the server as it is now."""
    figures: dict[str, Any] = {
        kind: measure(server, cluster, _paths(kind, tasks, requests)) for kind in KINDS
    }
    db, python = figures["db"], figures["python"]
    figures["rps_ratio"] = round(db["rps"] / python["rps"], 2)
    figures["cpu_ratio"] = round(python["cpu_ms"] / db["cpu_ms"], 2)
    # What serializing 99 more rows costs on each path: the page less a one-task page.
    db_rows = db["cpu_ms"] + db["db_cpu_ms"] - figures["take1"]["cpu_ms"] - figures["take1"]["db_cpu_ms"]
    python_rows = (
        python["cpu_ms"] + python["db_cpu_ms"] - figures["take1"]["cpu_ms"] - figures["take1"]["db_cpu_ms"]
    )
    figures["rows_cpu_ms"] = {"db": round(db_rows, 3), "python": round(python_rows, 3)}
    return figures


def one_backend(
    root: Path, name: str, cluster: Cluster | None, sizes: tuple[int, ...], requests: int
) -> dict[str, Any]:
    """One server on one backend, measured at each size as its table grows."""
    server = Server(root / name, database=cluster.create_database("lists") if cluster else "")
    server.init()
    paths = resolve("server-shim", str(server.home))
    location = server_config.load(paths).database_location(paths)
    result: dict[Any, Any] = {"populate_seconds": {}}  # sizes (int) and names
    held = 0
    server.start()
    try:
        for size in sizes:
            result["populate_seconds"][size] = round(populate(location, held, size), 1)
            held = size
            result[size] = one_size(server, cluster, size, requests)
    finally:
        server.stop()
    return result


def _rows(backend: str, figures: dict[Any, Any], sizes: tuple[int, ...]) -> list[tuple[str, str, str, str]]:
    rows = []
    for size in sizes:
        f = figures[size]
        shown = ", ".join(f"{k} {f[k]['rps']}/s {f[k]['cpu_ms']}+{f[k]['db_cpu_ms']}ms" for k in KINDS)
        ratios = f"x{f['rps_ratio']} rps, x{f['cpu_ratio']} less CPU"
        rows.append(
            (f"{backend} {size:,} tasks", shown, ratios, f"populate {figures['populate_seconds'][size]}s")
        )
    return rows


def main(quick: bool) -> dict[str, Any]:
    """Every size on both backends; met when the ratios at the issue's size reach their targets."""
    sizes, requests = (QUICK_SIZES, QUICK_REQUESTS) if quick else (SIZES, REQUESTS)
    figures: dict[str, Any] = {"sizes": sizes, "requests": requests, "concurrency": CONCURRENCY}
    cluster = Cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-lists-") as folder:
            figures["sqlite"] = one_backend(Path(folder), "sqlite", None, sizes, requests)
            figures["postgresql"] = one_backend(Path(folder), "pg", cluster, sizes, requests)
    finally:
        cluster.stop()
    backends = ("sqlite", "postgresql")
    rows = [row for b in backends for row in _rows(b, figures[b], sizes)]
    print_table("lists: req/s and server+database CPU ms/req per kind (db vs python ratios)", rows)
    judged = 100_000 if 100_000 in sizes else sizes[-1]
    worst_rps = min(figures[b][judged]["rps_ratio"] for b in backends)
    worst_cpu = min(figures[b][judged]["cpu_ratio"] for b in backends)
    growth = {
        b: round(figures[b][sizes[-1]]["db"]["cpu_ms"] / figures[b][sizes[0]]["db"]["cpu_ms"], 2)
        for b in backends
    }
    figures["page_cpu_growth"] = growth
    return {
        "benchmark": "lists",
        "figures": figures,
        "ratio": worst_rps,
        "target": ">= 2x requests/s and >= 5x less server CPU per request at 100,000 tasks, both backends",
        "met": worst_rps >= 2 and worst_cpu >= 5,
        "flat": all(g <= 1.5 for g in growth.values()),
    }
