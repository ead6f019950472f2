"""Idle benchmark: the footprint of one registered, connected, idle tentacle.

A fresh server instance and one tentacle registered with the real command in polling
mode (its default configuration: 20 s heartbeat), started with ``tentacle run``. Once
it is online and has settled, its RSS is read every second and its CPU time (utime +
stime) at both ends of a 60 s window (``--quick``: 15 s).

Targets: RSS <= 40 MB (the window's maximum), CPU <= 0.1% (over the window).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench._instances import MIB, Server, Tentacles, mib, print_table, proc_stats, wait_until

SETTLE = 3.0
RSS_LIMIT = 40 * 1000 * 1000  # "40 MB"
CPU_LIMIT = 0.1  # percent


def watch(pid: int, window: float) -> dict[str, Any]:
    """RSS every second and CPU over `window` seconds."""
    first = proc_stats(pid)
    start = time.monotonic()
    samples = [first.rss]
    while time.monotonic() - start < window:
        time.sleep(1.0)
        samples.append(proc_stats(pid).rss)
    last = proc_stats(pid)
    elapsed = time.monotonic() - start
    cpu = last.cpu_seconds - first.cpu_seconds
    return {
        "windowSeconds": round(elapsed, 1),
        "rssMaxMB": round(max(samples) / 1e6, 1),
        "rssMaxMiB": mib(max(samples)),
        "rssMeanMiB": round(sum(samples) / len(samples) / MIB, 1),
        "peakRssSinceStartMiB": mib(last.peak_rss),
        "cpuSeconds": round(cpu, 3),
        "cpuPercent": round(100 * cpu / elapsed, 3),
    }


def run(window: float, root: Path) -> dict[str, Any]:
    """A server and one polling tentacle; watch the tentacle."""
    server = Server(root / "server")
    server.init()
    server.start()
    tentacles = Tentacles(root / "tentacles", server)
    try:
        tentacles.register(["idle-01"], "Bench", "web")
        tentacles.start(["idle-01"])
        wait_until(lambda: server.online() == 1, 60, 0.25, "the tentacle online")
        time.sleep(SETTLE)
        return watch(tentacles.procs["idle-01"].pid, window)
    finally:
        tentacles.stop_all()
        server.stop()


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    window = 15.0 if quick else 60.0
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        figures = run(window, Path(tmp))
    rss_met = figures["rssMaxMB"] * 1e6 <= RSS_LIMIT
    cpu_met = figures["cpuPercent"] <= CPU_LIMIT
    rows = [
        ("window", f"{figures['windowSeconds']} s", "", ""),
        ("RSS (max)", f"{figures['rssMaxMB']} MB ({figures['rssMaxMiB']} MiB)", "<= 40 MB", str(rss_met)),
        ("CPU", f"{figures['cpuPercent']}% ({figures['cpuSeconds']} s)", "<= 0.1%", str(cpu_met)),
    ]
    print_table("idle: one registered, connected, idle polling tentacle", rows)
    target = "RSS <= 40 MB, CPU <= 0.1%"
    return {
        "benchmark": "idle",
        "figures": figures,
        "ratio": None,
        "target": target,
        "met": rss_met and cpu_met,
    }
