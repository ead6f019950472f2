"""Reactions benchmark: dispatch with and without reactions, and event-to-delivery latency.

One real ``server-shim run`` process and N polling load-generator agents (`rigs.loadgen`: real
protocol, real mutual TLS; N = 1,000, ``--quick``: 200), all online. A receiver (aiohttp, in
a thread of this process) answers 200 at once and notes when each request arrives.

(a) Dispatch: a one-step deployment to all N targets, timed from the create request to the
    task's ``finishedAt``, without reactions and with 3 HTTP reactions that take every event
    kind (so every event of the deployment becomes 3 deliveries), in `ROUNDS` pairs whose
    order alternates; between runs the previous task's ``task.finish`` calls and deliveries
    settle. The medians of each (and the server's CPU seconds per deployment, which other
    work on a shared machine disturbs less than wall time). Target: with <= 1.1 x without.
(b) Latency: `EVENTS` releases created one after another (20 a second), each a
    ``releaseCreated`` event that the 3 reactions deliver: the time from the event (its
    ``time``, stamped in the transaction that records it) to the request's arrival at the
    receiver, over every delivery. Target: p95 <= 200 ms on loopback.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.dispatch_bench import ENVIRONMENT, ROLE
from rigs.instances import Server, print_table, raise_fd_limit, wait_until
from rigs.loadgen import LoadGen, provision
from tentacle.protocol.reactions import EVENT_KINDS

ROUNDS = 9
SETTLE = 1.5  # seconds between deployments: the last task's task.finish calls to every target end
EVENTS = 200
REACTIONS = ("chat", "audit", "metrics")
TARGET_RATIO, TARGET_P95_MS = 1.1, 200.0
TARGET = f"with reactions <= {TARGET_RATIO} x without; event-to-delivery p95 <= {TARGET_P95_MS:.0f} ms"


class Receiver:
    """An aiohttp receiver on its own thread and loop; notes (arrival time, event) of each request."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.got.append((time.time(), body))
        return web.Response(text="ok")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        runner = self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # bound
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> Receiver:
        """Serve in the background; returns once listening."""
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Close the connections, then stop the loop."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def reactions_on(server: Server, receiver: Receiver) -> None:
    """PUT the 3 reactions, each on every event kind."""
    for name in REACTIONS:
        doc = {
            "trigger": {"events": list(EVENT_KINDS)},
            "action": {
                "http": {"url": f"http://127.0.0.1:{receiver.port}/{name}", "allowPrivateNetworks": True}
            },
        }
        server.call("PUT", f"/api/Default/reactions/{name}/v1", doc)


def reactions_off(server: Server) -> None:
    """DELETE the 3 reactions."""
    for name in REACTIONS:
        server.call("DELETE", f"/api/Default/reactions/{name}/v1")


def deploy_seconds(server: Server, version: str) -> tuple[float, float]:
    """One deployment to every target: seconds from the create request to the task's finishedAt,
    and the server's CPU seconds meanwhile."""
    cpu = server.stats().cpu_seconds
    started = time.time()
    body = {"projectName": "Bench", "releaseVersion": version, "environmentNames": [ENVIRONMENT]}
    task_id = server.call("POST", "/api/Default/deployments/create/untenanted/v1", body)["taskId"]
    final: dict[str, Any] = {}

    def ended() -> bool:
        final.update(server.call("GET", f"/api/Default/tasks/{task_id}/v1"))
        return final["state"] in ("success", "failed", "cancelled")

    wait_until(ended, 600, 0.1, f"task {task_id} to end")
    if final["state"] != "success":
        raise RuntimeError(f"task {task_id} ended {final['state']}: {final.get('error')}")
    return float(final["finishedAt"]) - started, server.stats().cpu_seconds - cpu


def rounds(server: Server, receiver: Receiver, version: str) -> dict[str, list[tuple[float, float]]]:
    """`ROUNDS` pairs of deployments, with and without reactions, the order alternating."""
    runs: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    for n in range(ROUNDS):
        for kind in ("with", "without") if n % 2 else ("without", "with"):
            runs[kind].append(
                deploy_with(server, receiver, version) if kind == "with" else deploy_seconds(server, version)
            )
            time.sleep(SETTLE)
    return runs


def deploy_with(server: Server, receiver: Receiver, version: str) -> tuple[float, float]:
    """A deployment with the 3 reactions on; returns once its 9 deliveries arrived."""
    reactions_on(server, receiver)
    expected = len(receiver.got) + 3 * len(REACTIONS)  # deploymentQueued, Started, Succeeded
    figures = deploy_seconds(server, version)
    wait_until(lambda: len(receiver.got) >= expected, 60, 0.05, "the deliveries")
    reactions_off(server)
    return figures


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def latencies(server: Server, receiver: Receiver) -> list[float]:
    """Create `EVENTS` releases at 20 a second; the event-to-arrival seconds of their deliveries."""
    before = len(receiver.got)
    for n in range(EVENTS):
        server.call(
            "POST", "/api/Default/releases/create/v1", {"projectName": "Bench", "releaseVersion": f"9.0.{n}"}
        )
        time.sleep(0.05)
    expected = before + EVENTS * len(REACTIONS)
    wait_until(lambda: len(receiver.got) >= expected, 120, 0.1, f"{expected} deliveries")
    return [
        arrived - _stamp(event["time"])
        for arrived, event in receiver.got[before:]
        if event.get("kind") == "releaseCreated"
    ]


def run(agents: int, root: Path) -> dict[str, Any]:
    """One server, `agents` agents; the dispatch rounds, then the latency run."""
    server = Server(root / "server")
    server.init()
    identities = provision(
        server.home, [f"lg-{i:05d}" for i in range(agents)], ENVIRONMENT, ROLE, root / "agents"
    )
    server.start()
    receiver = Receiver().start()
    load = LoadGen(
        identities, server.polling_url, server.home / "ca.pem", server.cli("show-thumbprint"), root
    )
    try:
        version = server.deploy_trivial_step(ENVIRONMENT, ROLE)
        load.start()
        wait_until(lambda: server.online() == agents, 300, 0.5, f"{agents} online")
        time.sleep(2)  # the connection herd's events and garbage settle before timing
        runs = rounds(server, receiver, version)
        reactions_on(server, receiver)
        return {"agents": agents, **runs, "lags": latencies(server, receiver)}
    finally:
        load.stop()
        receiver.stop()
        server.stop()


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    raise_fd_limit()
    agents = 200 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="bench-reactions-") as tmp:
        result = run(agents, Path(tmp))
    without = statistics.median(wall for wall, _ in result["without"])
    with_reactions = statistics.median(wall for wall, _ in result["with"])
    cpu_without = statistics.median(cpu for _, cpu in result["without"])
    cpu_with = statistics.median(cpu for _, cpu in result["with"])
    cuts = statistics.quantiles([lag * 1000 for lag in result["lags"]], n=100)
    ratio = with_reactions / without
    p50, p95 = statistics.median(result["lags"]) * 1000, cuts[94]
    figures = {
        "targets": agents,
        "deploySecondsWithout": [round(wall, 2) for wall, _ in result["without"]],
        "deploySecondsWith": [round(wall, 2) for wall, _ in result["with"]],
        "medianWithout": round(without, 2),
        "medianWith": round(with_reactions, 2),
        "serverCpuSecondsWithout": round(cpu_without, 2),
        "serverCpuSecondsWith": round(cpu_with, 2),
        "deliveries": len(result["lags"]),
        "latencyP50Ms": round(p50, 1),
        "latencyP95Ms": round(p95, 1),
        "latencyMaxMs": round(max(result["lags"]) * 1000, 1),
    }
    slower_ok, fast_ok = ratio <= TARGET_RATIO, p95 <= TARGET_P95_MS
    rows = [
        (f"deploy to {agents}, no reactions (median of {ROUNDS})", f"{without:.2f} s", "", ""),
        (f"deploy to {agents}, 3 HTTP reactions", f"{with_reactions:.2f} s", "", ""),
        ("server CPU per deployment, without / with", f"{cpu_without:.2f} s / {cpu_with:.2f} s", "", ""),
        ("with / without", f"{ratio:.3f}", f"<= {TARGET_RATIO}", str(slower_ok)),
        (f"event -> delivery p50 ({len(result['lags'])} deliveries)", f"{p50:.1f} ms", "", ""),
        ("event -> delivery p95", f"{p95:.1f} ms", f"<= {TARGET_P95_MS:.0f} ms", str(fast_ok)),
    ]
    print_table("reactions: dispatch with and without 3 HTTP reactions; event-to-delivery latency", rows)
    return {
        "benchmark": "reactions",
        "figures": figures,
        "ratio": round(without / with_reactions, 3),
        "target": TARGET,
        "met": slower_ok and fast_ok,
    }
