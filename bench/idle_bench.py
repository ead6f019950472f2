"""Idle benchmark: the footprint of one registered, connected, idle tentacle.

A fresh server instance and one tentacle registered with the real command, started with
``tentacle run`` in its default configuration: first in polling mode (20 s heartbeat),
then in listening mode (the server checks it every 5 s). Once it is online and has
settled, its RSS is read every second and its CPU time (utime + stime) at both ends of a
60 s window (``--quick``: 15 s).

Targets, in each mode: RSS <= 40 MB (the window's maximum), CPU <= 0.1% (over the window).
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
    free_ports,
    mib,
    print_table,
    proc_stats,
    run_cli,
    wait_until,
)

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


def run(window: float, root: Path, mode: str) -> dict[str, Any]:
    """A server and one tentacle in `mode`; watch the tentacle."""
    server = Server(root / "server")
    server.init()
    server.start()
    tentacles = Tentacles(root / "tentacles", server)
    try:
        if mode == "polling":
            tentacles.register(["idle-01"], "Bench", "web")
        else:
            _register_listening(tentacles, "idle-01")
        tentacles.start(["idle-01"])
        wait_until(lambda: server.online() == 1, 60, 0.25, "the tentacle online")
        time.sleep(SETTLE)
        return watch(tentacles.procs["idle-01"].pid, window)
    finally:
        tentacles.stop_all()
        server.stop()


def _register_listening(tentacles: Tentacles, name: str) -> None:
    server = tentacles.server
    token, thumbprint = server.cli("token", "create"), server.cli("show-thumbprint")
    [port] = free_ports(1)
    args = ["--server", server.url, "--token", token, "--server-thumbprint", thumbprint, "--name", name]
    args += ["--environment", "Bench", "--role", "web", "--listen", f"127.0.0.1:{port}"]
    run_cli("tentacle", "--home", str(tentacles.home(name)), "register", *args)


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark in both modes, print a table, return the JSON figures."""
    window = 15.0 if quick else 60.0
    figures: dict[str, Any] = {}
    for mode in ("polling", "listening"):
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
            figures[mode] = run(window, Path(tmp), mode)
    rows, met = [], True
    for mode, got in figures.items():
        rss_met = got["rssMaxMB"] * 1e6 <= RSS_LIMIT
        cpu_met = got["cpuPercent"] <= CPU_LIMIT
        met = met and rss_met and cpu_met
        rows += [
            (
                f"{mode}: RSS (max)",
                f"{got['rssMaxMB']} MB ({got['rssMaxMiB']} MiB)",
                "<= 40 MB",
                str(rss_met),
            ),
            (f"{mode}: CPU", f"{got['cpuPercent']}% ({got['cpuSeconds']} s)", "<= 0.1%", str(cpu_met)),
        ]
    print_table(f"idle: one registered, connected, idle tentacle, {window:g} s each", rows)
    return {
        "benchmark": "idle",
        "figures": figures,
        "ratio": None,
        "target": "RSS <= 40 MB, CPU <= 0.1%, in each mode",
        "met": met,
    }
