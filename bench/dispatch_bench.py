"""Dispatch benchmark: one deployment request to N polling agents plus 10 real tentacles.

For each size N (1,000 and 5,000; ``--quick``: 200): a fresh server instance, N
load-generator agents (`rigs.loadgen`: real protocol, real mutual TLS, one websocket
each) and 10 real ``tentacle run`` processes, all polling and online. Then one
``deployments/create`` request for a one-step ``echo hi`` process to every target, and
the task is followed until it ends. Figures per size: seconds from the create request
to the task's success (the task's own ``finishedAt``), the server's RSS while all are
connected, its peak RSS, and its CPU during the dispatch.

Targets: 1,000 targets done in <= 10 s; 5,000 connected agents with the server's RSS
<= 1 GiB (``--quick``: 200 targets done in <= 3 s).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rigs.instances import (
    MIB,
    Server,
    Tentacles,
    mib,
    print_table,
    raise_fd_limit,
    wait_until,
)
from rigs.loadgen import LoadGen, provision

ENVIRONMENT, ROLE = "Bench", "web"
REAL_TENTACLES = 10
GIB = 1024 * MIB


def run_size(agents: int, root: Path) -> dict[str, Any]:
    """One server, `agents` load-generator agents and the real tentacles; one deployment."""
    server = Server(root / "server")
    server.init()
    identities = provision(
        server.home, [f"lg-{i:05d}" for i in range(agents)], ENVIRONMENT, ROLE, root / "agents"
    )
    server.start()
    tentacles = Tentacles(root / "tentacles", server)
    pin = server.cli("show-thumbprint")
    load = LoadGen(identities, server.polling_url, server.home / "ca.pem", pin, root)
    try:
        version = server.deploy_trivial_step(ENVIRONMENT, ROLE)
        names = [f"real-{i:02d}" for i in range(REAL_TENTACLES)]
        tentacles.register(names, ENVIRONMENT, ROLE)
        tentacles.start(names)
        load.start()
        total = agents + REAL_TENTACLES
        connect_seconds = wait_until(lambda: server.online() == total, 300, 0.5, f"{total} online")
        time.sleep(2)  # let the connection herd's garbage settle before reading the idle figures
        return {
            "agents": agents,
            "connectSeconds": round(connect_seconds, 1),
            **deploy(server, version, total),
        }
    finally:
        load.stop()
        tentacles.stop_all()
        server.stop()


def deploy(server: Server, version: str, total: int) -> dict[str, Any]:
    """Create the deployment, follow it to its end; the figures of that run."""
    connected = server.online()
    before = server.stats()
    started = time.time()
    body = {"projectName": "Bench", "releaseVersion": version, "environmentNames": [ENVIRONMENT]}
    task_id = server.call("POST", "/api/Default/deployments/create/untenanted/v1", body)["taskId"]
    answered = time.time() - started

    def task() -> dict[str, Any]:
        return dict(server.call("GET", f"/api/Default/tasks/{task_id}/v1"))

    final: dict[str, Any] = {}

    def ended() -> bool:
        final.update(task())
        return final["state"] in ("success", "failed", "cancelled")

    wait_until(ended, 600, 0.25, f"task {task_id} to end")
    wall = time.time() - started
    after = server.stats()
    cpu = after.cpu_seconds - before.cpu_seconds
    return {
        "connected": connected,
        "targets": len(final["targets"]),
        "state": final["state"],
        "error": final.get("error"),
        "createAnswerSeconds": round(answered, 2),
        "doneSeconds": round(float(final["finishedAt"]) - started, 2),
        "serverRssConnectedMiB": mib(before.rss),
        "serverPeakRssMiB": mib(after.peak_rss),
        "serverCpuSeconds": round(cpu, 2),
        "serverCpuPercent": round(100 * cpu / wall, 1),
    }


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    raise_fd_limit()
    sizes = [200] if quick else [1000, 5000]
    figures: dict[str, Any] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-dispatch-{size}-") as tmp:
            figures[str(size)] = run_size(size, Path(tmp))
    met, target, rows = _verdict(figures, quick)
    print_table("dispatch: one deployment to N polling agents + 10 real tentacles", rows)
    return {"benchmark": "dispatch", "figures": figures, "ratio": None, "target": target, "met": met}


def _ok(run: dict[str, Any]) -> bool:
    return bool(run["state"] == "success" and run["connected"] == run["agents"] + REAL_TENTACLES)


def _verdict(figures: dict[str, Any], quick: bool) -> tuple[bool, str, list[tuple[str, str, str, str]]]:
    rows: list[tuple[str, str, str, str]] = []
    for size, run in figures.items():
        n = f"N={size}"
        rows.append((f"{n} connected", f"{run['connected']}", f"{int(size) + REAL_TENTACLES}", ""))
        rows.append((f"{n} task", f"{run['state']}", "success", ""))
        rows.append((f"{n} create -> success", f"{run['doneSeconds']} s", "", ""))
        rows.append((f"{n} server RSS connected", f"{run['serverRssConnectedMiB']} MiB", "", ""))
        rows.append((f"{n} server peak RSS", f"{run['serverPeakRssMiB']} MiB", "", ""))
        rows.append((f"{n} server CPU", f"{run['serverCpuSeconds']} s ({run['serverCpuPercent']}%)", "", ""))
    if quick:
        run = figures["200"]
        met = _ok(run) and run["doneSeconds"] <= 3.0
        rows.append(("200 targets done", f"{run['doneSeconds']} s", "<= 3 s", str(met)))
        return met, "200 targets done in <= 3 s", rows
    small, large = figures["1000"], figures["5000"]
    fast = _ok(small) and small["doneSeconds"] <= 10.0
    lean = _ok(large) and large["serverPeakRssMiB"] * MIB <= GIB
    rows.append(("1,000 targets done", f"{small['doneSeconds']} s", "<= 10 s", str(fast)))
    rows.append(
        ("5,000 agents: server peak RSS", f"{large['serverPeakRssMiB']} MiB", "<= 1024 MiB", str(lean))
    )
    target = "1,000 targets done in <= 10 s; 5,000 connected agents with server RSS <= 1 GiB"
    return fast and lean, target, rows
