"""Flood benchmark, the tentacle's side of ``bench logs``: how fast a step's output reaches the task's log.

A real `TaskRunner` behind a real `Service`, in this process, runs one-step tasks whose
scripts print as fast as they can:

1. ``seq 1 N`` (N = 2,000,000; ``--quick``: 500,000) with a log cap above what it prints:
   lines per second from the script, through the pipes, the masker and the writer thread,
   into log.jsonl (every line numbered, written and flushed), timed from the gate's
   opening to its result.
2. ``yes | head -c 200M`` (104,857,600 lines; ``--quick``: 50M) with the default 64 MiB
   cap: how long the step takes, the size of log.jsonl, and how much this process's
   resident memory grew (sampled every 10 ms).

Targets: ≥ 100,000 lines/s to disk (twice what the server is asked to store, so the
tentacle is never the bottleneck); the 200M flood ends within 30 s with log.jsonl within
1 MiB of its cap and memory growth under 64 MiB.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from rigs.instances import MIB, mib, print_table
from tentacle.agent.rpc import Service
from tentacle.protocol.messages import Request
from tentacle.protocol.plan import Plan, PlannedStep
from tentacle.protocol.process import Script
from tentacle.runner.runner import TaskRunner
from tentacle.runner.task_log import MAX_BYTES

LINES_TARGET = 100_000
FLOOD_SECONDS = 30.0


class Runner:
    """A task runner served the way both transports serve it."""

    def __init__(self, state: Path, log_limit_bytes: int) -> None:
        self.runner = TaskRunner(state, log_limit_bytes=log_limit_bytes)
        self.service = Service("bench-01", "polling")
        self.runner.register(self.service)
        self.calls = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One request that must succeed."""
        self.calls += 1
        response = await self.service.handle(Request.of(str(self.calls), method, params))
        assert response.error is None, response.error
        result: dict[str, Any] = msgspec.json.decode(response.result)
        return result

    async def run_step(self, task_id: str, body: str) -> tuple[float, dict[str, Any]]:
        """Seconds from opening the step's gate to its result, and the result."""
        plan = Plan(
            task_id=task_id,
            kind="runbook",
            project_name="Bench",
            release_version="",
            environment_name="Bench",
            machine_name="bench-01",
            steps=(PlannedStep(index=0, name="Flood", script=Script("bash", body)),),
        )
        await self.call("task.start", plan=plan.to_json())
        start = time.monotonic()
        await self.call("task.gate", taskId=task_id, gateIndex=0, gateName="step:0")
        version = 0
        while True:
            status = await self.call("task.status", taskId=task_id, logSince=2**53, version=version, wait=5)
            gate = next((g for g in status["gates"] if g["state"] not in ("pending", "running")), None)
            if gate is not None:
                return time.monotonic() - start, gate
            version = status["version"]


def lines_in(log_file: Path) -> int:
    """Output lines in a log.jsonl."""
    return log_file.read_bytes().count(b'"stream":"stdout"')


class PeakRss:
    """The highest growth of this process's resident memory while it runs (a sampling thread)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.rss()
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def rss(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self.page

    def sample(self) -> None:
        while not self.done.wait(0.01):
            self.peak = max(self.peak, self.rss() - self.base)

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join()


async def measure(root: Path, quick: bool) -> dict[str, Any]:
    """Both runs; their figures."""
    count = 500_000 if quick else 2_000_000
    fast = Runner(root / "fast", log_limit_bytes=2**40)
    seconds, gate = await fast.run_step("t-seq", f"seq 1 {count}")
    assert gate["state"] == "success", gate
    written = lines_in(root / "fast" / "tasks" / "t-seq" / "log.jsonl")
    assert written == count, written
    await fast.runner.shutdown(1)

    flood_mb = 50 if quick else 200
    flood = Runner(root / "flood", log_limit_bytes=MAX_BYTES)
    with PeakRss() as memory:
        flood_seconds, gate = await flood.run_step("t-flood", f"yes | head -c {flood_mb}M")
    assert gate["state"] == "success", gate
    log_size = (root / "flood" / "tasks" / "t-flood" / "log.jsonl").stat().st_size
    await flood.runner.shutdown(1)
    return {
        "lines": count,
        "linesSeconds": round(seconds, 2),
        "linesPerSecondToDisk": round(count / seconds),
        "floodBytes": flood_mb * MIB,
        "floodLines": flood_mb * MIB // 2,
        "floodSeconds": round(flood_seconds, 2),
        "floodLogMiB": mib(log_size),
        "floodLogCapMiB": mib(MAX_BYTES),
        "floodRssGrowthMiB": mib(memory.peak),
    }


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark; its JSON line."""
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as tmp:
        figures = asyncio.run(measure(Path(tmp), quick))
    lines_met = figures["linesPerSecondToDisk"] >= LINES_TARGET
    flood_met = (
        figures["floodSeconds"] <= FLOOD_SECONDS
        and abs(figures["floodLogMiB"] - figures["floodLogCapMiB"]) <= 1
        and figures["floodRssGrowthMiB"] < 64
    )
    print_table(
        "A step's output through the runner into log.jsonl",
        [
            (
                f"seq 1 {figures['lines']}: lines/s to disk",
                f"{figures['linesPerSecondToDisk']:,}",
                "≥ 100,000",
                str(lines_met),
            ),
            (
                f"yes | head -c {figures['floodBytes'] // MIB}M: seconds",
                str(figures["floodSeconds"]),
                f"≤ {FLOOD_SECONDS:g}",
                str(flood_met),
            ),
            (
                "  log.jsonl MiB (cap)",
                f"{figures['floodLogMiB']} ({figures['floodLogCapMiB']})",
                "at the cap",
                "",
            ),
            ("  memory growth MiB", str(figures["floodRssGrowthMiB"]), "< 64", ""),
        ],
    )
    return {
        "benchmark": "flood",
        "figures": figures,
        "target": "≥ 100,000 lines/s to disk; 200M flood ≤ 30 s, at the 64 MiB cap, memory growth < 64 MiB",
        "met": lines_met and flood_met,
    }
