"""Logs benchmark: task log lines stored per second, and how far the live log lags.

Three figures:
- ``storeLinesPerSecond``: the server's store path alone (`LogSink` into a fresh SQLite
  database, WAL): 4 targets hand over 1,000-line batches of 100-character lines as fast as
  they can; from the first batch to the last one stored. Target: >= 50,000 lines/s.
- ``endToEndLinesPerSecond``: a ``server-shim run`` process and a polling ``tentacle run``
  process; a step prints 300,000 short lines at once (``seq``); lines over the seconds from
  the deploy request to the task's success (all lines stored by then).
- ``lagSeconds``: the same pair; a step prints 10,000 lines/s for 5 s, each carrying the
  time it was printed; the bench follows the log over the API (every 50 ms, as a follower
  would) and takes, per line, the time it was read less the time it was printed.
  Target: p95 <= 1 s.
``--quick`` uses a fifth of the lines for the first two.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rigs.instances import Server, Tentacles, print_table, wait_until
from server_shim.dispatch.log_sink import LogSink
from server_shim.store.database import Database
from server_shim.store.log_rows import LogRow

TARGETS = 4
BATCH = 1000
STORE_TARGET = 50_000
LAG_TARGET = 1.0
_VERSIONS = itertools.count(1)
PACED = (
    "python3 -c 'import time\n"
    "start = time.time()\n"
    "for tick in range(500):\n"
    "    now = time.time()\n"
    '    print("\\n".join(f"{now:.4f} {tick} {i}" for i in range(20)), flush=True)\n'
    "    time.sleep(max(0.0, start + (tick + 1) * 0.01 - time.time()))\n'"
)


async def store_rate(root: Path, lines: int) -> float:
    """Lines per second through `LogSink` into a fresh database."""
    db = Database(root / "bench.db")
    db.sync(
        lambda conn: conn.execute(
            "INSERT INTO tasks VALUES ('T-1', 'Default', 'deployment', 'P', '1', NULL, 'Dev', 'running',"
            " NULL, 0, NULL, '{}', '{}')"
        )
    )
    sink = LogSink(db, 2**40)
    text = "x" * 100
    started = time.perf_counter()

    async def target(name: str) -> None:
        for first in range(1, lines // TARGETS + 1, BATCH):
            rows: list[LogRow] = [
                (seq, time.time(), "stdout", "Run", text) for seq in range(first, first + BATCH)
            ]
            await sink.put("T-1", name, rows)
        await sink.flush("T-1", name)

    await asyncio.gather(*(target(f"web-{i}") for i in range(TARGETS)))
    seconds = time.perf_counter() - started
    await sink.close()
    db.close()
    return sink.stored_lines / seconds


def deploy(server: Server, body: str) -> str:
    """Apply a one-step project, release it, deploy it to Dev; the task id."""
    doc = {
        "name": "Logs",
        "steps": [{"name": "Run", "roles": ["web"], "script": {"syntax": "bash", "body": body}}],
    }
    server.call("PUT", "/api/Default/projects/Logs/v1", doc)
    version = f"1.0.{next(_VERSIONS)}"
    server.call("POST", "/api/Default/releases/create/v1", {"projectName": "Logs", "releaseVersion": version})
    created = server.call(
        "POST",
        "/api/Default/deployments/create/untenanted/v1",
        {"projectName": "Logs", "releaseVersion": version, "environmentNames": ["Dev"]},
    )
    return str(created["taskId"])


def state(server: Server, task_id: str) -> str:
    """The task's state."""
    return str(server.call("GET", f"/api/Default/tasks/{task_id}/v1")["state"])


def end_to_end(server: Server, lines: int) -> float:
    """Lines per second from a step printing ``lines`` lines at once to the task's success."""
    started = time.monotonic()
    task_id = deploy(server, f"seq 1 {lines}")
    wait_until(lambda: state(server, task_id) in ("success", "failed", "cancelled"), 600, every=0.05)
    seconds = time.monotonic() - started
    last = server.call("GET", f"/api/Default/tasks/{task_id}/log/v1?since={lines - 1}")["items"]
    if state(server, task_id) != "success" or not last:
        raise RuntimeError(f"task {task_id} did not store its {lines} lines")
    return lines / seconds


def lag(server: Server) -> list[float]:
    """Per line printed at 10,000 lines/s: seconds from printed to read by a follower."""
    task_id = deploy(server, PACED)
    since, lags = 0, []
    while True:
        page = server.call("GET", f"/api/Default/tasks/{task_id}/log/v1?since={since}")
        now = time.time()
        for line in page["items"]:
            printed = line["text"].split()[0]
            if line["stream"] == "stdout" and printed.replace(".", "").isdigit():
                lags.append(now - float(printed))
        since = page["nextSince"]
        if page["taskState"] != "running" and page["taskState"] != "queued" and not page["more"]:
            return lags
        if not page["more"]:
            time.sleep(0.05)


def main(quick: bool) -> dict[str, Any]:
    """Run the three measurements; the figures."""
    scale = 5 if quick else 1
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        root = Path(tmp)
        store = asyncio.run(store_rate(root, 1_000_000 // scale))
        server = Server(root / "server")
        server.init()
        server.start()
        fleet = Tentacles(root / "tentacles", server)
        try:
            fleet.register(["web-01"], "Dev", "web")
            fleet.start(["web-01"])
            wait_until(lambda: server.online() == 1, 60)
            e2e = end_to_end(server, 300_000 // scale)
            lags = sorted(lag(server))
        finally:
            fleet.stop_all()
            server.stop()
    p95 = lags[int(len(lags) * 0.95)] if lags else float("inf")
    figures = {
        "storeLinesPerSecond": round(store),
        "endToEndLinesPerSecond": round(e2e),
        "lagP50Seconds": round(statistics.median(lags), 3) if lags else None,
        "lagP95Seconds": round(p95, 3),
        "lagMaxSeconds": round(lags[-1], 3) if lags else None,
        "lagLines": len(lags),
    }
    met = store >= STORE_TARGET and p95 <= LAG_TARGET
    print_table(
        "logs: lines stored per second, live lag at 10,000 lines/s",
        [
            ("store path", f"{store:,.0f} lines/s", f">= {STORE_TARGET:,}", str(store >= STORE_TARGET)),
            ("end to end (seq)", f"{e2e:,.0f} lines/s", "-", "-"),
            ("lag p95", f"{p95:.3f} s", f"<= {LAG_TARGET} s", str(p95 <= LAG_TARGET)),
        ],
    )
    target = f"store >= {STORE_TARGET} lines/s; lag p95 <= {LAG_TARGET} s at 10,000 lines/s"
    return {"benchmark": "logs", "figures": json.loads(json.dumps(figures)), "target": target, "met": met}
