"""lists: 100-task pages built as JSON by the database against rows serialized in Python.

A real server (``python -m server_shim run``) on each backend, SQLite and PostgreSQL (a
throwaway cluster), holds 100,000 tasks (``--quick``: 10,000). Five client threads, each
with one kept-alive TLS connection, ask for 1,000 pages of 100 tasks
(``GET /api/Default/tasks/v1?take=100&skip=N``, the same pages for both paths), first as
the database builds them, then with ``render=python`` (the same rows read and serialized
in the server's Python). Figures: requests per second and the server's CPU time per
request (utime + stime from /proc, over the run). Target: at least twice the requests per
second and five times less server CPU per request than the Python path, on both backends.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rigs.instances import Server, print_table
from rigs.pgcluster import Cluster
from server_shim import server_config
from server_shim.store.database import Database

CONCURRENCY = 5
PAGE = 100


def populate(location: Path | str, count: int) -> None:
    """``count`` finished tasks, as a deployment leaves them (small plans, a snapshot)."""
    coordinator = json.dumps({"state": "success", "targets": {"web-01": {"phase": "done"}}})
    rows = [
        (
            f"ServerTasks-{n}", "Default", "deployment", f"Project{n % 20}", f"1.0.{n % 50}", None, "Prod",
            ("success", "failed", "cancelled")[n % 3], "step failed" if n % 3 == 1 else None,
            1_733_000_000.0 + n * 1.5, 1_733_000_010.0 + n * 1.5, "{}", coordinator,
        )
        for n in range(count)
    ]  # fmt: skip
    db = Database(location)
    try:
        for start in range(0, count, 10_000):
            db.sync(
                lambda conn, part=rows[start : start + 10_000]: conn.executemany(
                    "INSERT INTO tasks (task_id, space, kind, project, release_version, runbook, environment,"
                    " state, error, created_at, finished_at, plans, coordinator)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    part,
                )
            )
        if db.dialect == "postgresql":  # what autovacuum does soon after a load: counts use the index
            db.conn.execute("VACUUM ANALYZE tasks")
    finally:
        db.close()


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


def measure(server: Server, requests: int, tasks: int, python: bool) -> dict[str, float]:
    """Requests per second and server CPU milliseconds per request for one path."""
    chooser = random.Random(7)
    suffix = "&render=python" if python else ""
    paths = [
        f"/api/Default/tasks/v1?take={PAGE}&skip={chooser.randrange(0, max(1, tasks // 20))}{suffix}"
        for _ in range(requests)
    ]
    _client(server, paths[:20], [])  # warm: connections, prepared statements, caches
    shares = [paths[i::CONCURRENCY] for i in range(CONCURRENCY)]
    answers: list[int] = []
    before, start = server.stats().cpu_seconds, time.perf_counter()
    threads = [threading.Thread(target=_client, args=(server, share, answers)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - start, server.stats().cpu_seconds - before
    assert len(answers) == requests
    return {"rps": requests / elapsed, "cpu_ms": 1000 * cpu / requests, "bytes": sum(answers) / requests}


def one_backend(root: Path, name: str, database: str, tasks: int, requests: int) -> dict[str, Any]:
    """Both paths against one server on one backend."""
    server = Server(root / name, database=database)
    server.init()
    config = server_config.load(server_config_paths(server))
    populate(config.database_location(server_config_paths(server)), tasks)
    server.start()
    try:
        built = measure(server, requests, tasks, python=False)
        python = measure(server, requests, tasks, python=True)
    finally:
        server.stop()
    return {
        "db_rps": round(built["rps"], 1),
        "python_rps": round(python["rps"], 1),
        "db_cpu_ms": round(built["cpu_ms"], 2),
        "python_cpu_ms": round(python["cpu_ms"], 2),
        "rps_ratio": round(built["rps"] / python["rps"], 2),
        "cpu_ratio": round(python["cpu_ms"] / built["cpu_ms"], 2),
        "page_bytes": round(built["bytes"]),
    }


def server_config_paths(server: Server) -> Any:
    """The instance paths of a rig server's home."""
    from tentacle.common.paths import resolve

    return resolve("server-shim", str(server.home))


def main(quick: bool) -> dict[str, Any]:
    """Run both paths on both backends; met when every ratio reaches its target."""
    tasks, requests = (10_000, 300) if quick else (100_000, 1_000)
    figures: dict[str, Any] = {"tasks": tasks, "requests": requests, "concurrency": CONCURRENCY}
    cluster = Cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-lists-") as folder:
            root = Path(folder)
            figures["sqlite"] = one_backend(root, "sqlite", "", tasks, requests)
            figures["postgresql"] = one_backend(root, "pg", cluster.create_database("lists"), tasks, requests)
    finally:
        cluster.stop()
    rows = [
        (backend, f"{f['db_rps']} vs {f['python_rps']}", f"{f['db_cpu_ms']} vs {f['python_cpu_ms']}",
         f"x{f['rps_ratio']} rps, x{f['cpu_ratio']} less CPU")
        for backend, f in ((b, figures[b]) for b in ("sqlite", "postgresql"))
    ]  # fmt: skip
    print_table("lists: DB-built JSON vs Python (req/s, server CPU ms/req)", rows)
    worst_rps = min(figures[b]["rps_ratio"] for b in ("sqlite", "postgresql"))
    worst_cpu = min(figures[b]["cpu_ratio"] for b in ("sqlite", "postgresql"))
    return {
        "benchmark": "lists",
        "figures": figures,
        "ratio": worst_rps,
        "target": ">= 2x requests/s and >= 5x less server CPU per request, both backends",
        "met": worst_rps >= 2 and worst_cpu >= 5,
    }
