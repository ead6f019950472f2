"""A task's log against a flood and a full disk: capped, counted, bounded in memory, never a silent gap.

The floods are real scripts (`yes`, `head`, `tr`) through the real runner; the full disks
are real tmpfs mounts of a few MiB, made by the test (it runs as root, as CI does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tentacle.agent import agent_config as config
from tentacle.common.paths import resolve
from tentacle.errors import ConfigError
from tentacle.protocol.rpc_messages import LogLine, LogStream
from tentacle.runner.job import MAX_LOG_BYTES
from tentacle.runner.task_log import DISK_FLOOR, MAX_BYTES, TaskLog, line_size
from tests.conftest import LiveServer, Tentacles
from tests.deploying import apply, deploy, release, wait_task
from tests.deploying import step as deploy_step
from tests.deploying import texts as server_texts
from tests.tasks_helpers import EVERYTHING_READ, FINAL, Agent, gate_of, make_plan, step, texts

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
FLOOR = f"less than {DISK_FLOOR // 1024} KiB free on the tentacle's disk"


@contextlib.contextmanager
def peak_rss() -> Iterator[list[int]]:
    """The highest growth of this process's resident memory while the block runs (sampled every 10 ms)."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * page

    base, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss() - base)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` for the block (the test must run as root)."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs to fill a disk for real: run it as root (CI does)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


async def until_printed(agent: Agent, task_id: str, timeout: float = 10) -> None:
    """Wait until the task's script printed its first line."""
    deadline, since = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        lines = (await agent.status(task_id, since, EVERYTHING_READ, wait=1))["log"]
        if any(line["stream"] == "stdout" for line in lines):
            return
        since = lines[-1]["seq"] if lines else since
    pytest.fail(f"{task_id} printed nothing within {timeout} s")


async def run_step(agent: Agent, task_id: str, body: str, timeout: float = 120) -> dict[str, Any]:
    """Start a one-step task, open its gate and wait for the gate's result."""
    await agent.start(make_plan(task_id, [step(1, "Flood", body)]))
    await agent.gate(task_id, 2, "step:1")
    answer = await agent.until(task_id, lambda s: (gate_of(s, 2) or {}).get("state") in FINAL, timeout)
    found = gate_of(answer, 2)
    assert found is not None
    return found


async def eventually(check: Callable[[], bool], timeout: float) -> None:
    """Wait (polling every 50 ms) until ``check()`` holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


def logged(agent: Agent, task_id: str) -> list[LogLine]:
    """Every line of a task's log.jsonl, read straight from the file."""
    data = (agent.state_dir / "tasks" / task_id / "log.jsonl").read_bytes()
    return list(msgspec.json.Decoder(LogLine).decode_lines(data))


def system_texts(lines: list[LogLine]) -> list[str]:
    """The texts of the runner's own lines."""
    return [line.text for line in lines if line.stream is LogStream.SYSTEM]


# --- the flood ------------------------------------------------------------------------------


async def test_a_flood_stops_at_the_cap_counts_every_line_and_keeps_memory_flat(tmp_path: Path) -> None:
    """`yes | head -c 200M` (104,857,600 lines) with the default 64 MiB cap: log.jsonl stays at the cap,
    one line says the cap was reached, one how many lines were dropped, kept + dropped is every line,
    and the tentacle's memory grows by less than 64 MiB (the pipes wait for the disk)."""
    agent = Agent(tmp_path / "state")
    with peak_rss() as peak:
        gate = await run_step(agent, "t-flood", "yes | head -c 200M")
    assert (gate["state"], gate["reason"]) == ("success", "exit code 0")
    size = (agent.state_dir / "tasks" / "t-flood" / "log.jsonl").stat().st_size
    assert MAX_BYTES - MiB < size < MAX_BYTES + MiB
    lines = logged(agent, "t-flood")
    kept = sum(1 for line in lines if line.stream is LogStream.STDOUT)
    assert system_texts(lines) == [
        "step 'Flood' started",
        "the task's log reached its cap of 64 MiB: further output lines are counted, not kept",
        f"{104_857_600 - kept} lines of output dropped: the task's log reached its cap of 64 MiB",
        "step 'Flood' finished: exit code 0",
    ]
    assert peak[0] < 64 * MiB, f"memory grew by {peak[0] / MiB:.0f} MiB"
    assert (await agent.status("t-flood", EVERYTHING_READ))["state"] == "success"
    await agent.runner.shutdown(1)


async def test_a_gigabyte_without_a_newline_is_cut_into_pieces_in_bounded_memory(tmp_path: Path) -> None:
    """1 GiB without a newline: 64 KiB pieces up to the (1 MiB) cap, then counted; memory stays flat."""
    agent = Agent(tmp_path / "state", log_limit_bytes=MiB)
    with peak_rss() as peak:
        gate = await run_step(agent, "t-long", "head -c 1G /dev/zero | tr '\\0' x")
    assert gate["state"] == "success"
    lines = logged(agent, "t-long")
    pieces = [line.text for line in lines if line.stream is LogStream.STDOUT]
    assert pieces and all(piece == "x" * 65536 for piece in pieces)
    # Pieces already split when the cap was reached are dropped one by one, the rest as one unfinished line.
    assert re.fullmatch(
        r"[0-9]+ lines? of output dropped: the task's log reached its cap of 1 MiB",
        system_texts(lines)[2],
    )
    assert peak[0] < 64 * MiB, f"memory grew by {peak[0] / MiB:.0f} MiB"
    await agent.runner.shutdown(1)


async def test_state_and_gates_are_answered_at_once_while_a_flood_of_long_lines_runs(tmp_path: Path) -> None:
    """With an endless flood of 60 KB lines and 32 MiB of log not yet read, task.cancel answers within a
    second and ends the step within a few; an answer from the start of the log shows the cancelled gate
    with at most 4 MiB of lines."""
    agent = Agent(tmp_path / "state", log_limit_bytes=512 * MiB)
    await agent.start(
        make_plan("t-wide", [step(1, "Flood", "yes \"$(head -c 60000 /dev/zero | tr '\\0' x)\"")])
    )
    await agent.gate("t-wide", 2, "step:1")
    await until_printed(agent, "t-wide")
    log_file = agent.state_dir / "tasks" / "t-wide" / "log.jsonl"
    await eventually(lambda: log_file.stat().st_size > 32 * MiB, 30)  # a backlog the server has not read

    before = time.monotonic()
    assert (await agent.call("task.cancel", taskId="t-wide"))["state"] == "running"
    assert time.monotonic() - before < 1.0
    gate = await agent.finished_gate("t-wide", 2)
    assert time.monotonic() - before < 5.0
    assert (gate["state"], gate["reason"]) == ("cancelled", "cancelled by the server")

    answer = await agent.status("t-wide", 0)
    assert (answer["state"], answer["more"]) == ("cancelled", True)
    shown = [msgspec.convert(line, LogLine) for line in answer["log"]]
    assert MAX_LOG_BYTES - 64 * 1024 < sum(map(line_size, shown)) <= MAX_LOG_BYTES
    assert len(msgspec.json.encode(answer)) < MAX_LOG_BYTES + 64 * 1024
    await agent.runner.shutdown(1)


def test_the_cap_is_set_in_tentacle_toml_and_a_bad_one_names_the_key(tmp_path: Path) -> None:
    """[tasks] log_limit_bytes sets the cap (64 MiB when absent); one below 64 KiB is refused by name."""
    paths = resolve("tentacle", str(tmp_path / "home"))
    paths.config.mkdir(parents=True)
    toml = paths.config / config.CONFIG_FILE
    assert config.load(paths, env={}).tasks.log_limit_bytes == MAX_BYTES == 64 * MiB
    toml.write_text("[tasks]\nlog_limit_bytes = 1048576\n")
    assert config.load(paths, env={}).tasks.log_limit_bytes == MiB
    toml.write_text("[tasks]\nlog_limit_bytes = 1000\n")
    with pytest.raises(ConfigError, match=r"tasks\.log_limit_bytes: must be 65536"):
        config.load(paths, env={})


# --- the full disk ------------------------------------------------------------------------


async def test_a_step_that_fills_the_disk_with_output_fails_and_its_log_says_how_many_lines_were_lost(
    tmp_path: Path,
) -> None:
    """On a 4 MiB state disk `seq 1 100000` (9 MB of log) exits 0, but its gate fails naming the lines lost;
    the log says so; kept + lost is every line; the disk keeps room for the task's own state."""
    with tmpfs(tmp_path / "state", "4m") as state:
        agent = Agent(state)
        gate = await run_step(agent, "t-full", "seq 1 100000")
        lines = logged(agent, "t-full")
        kept = [line.text for line in lines if line.stream is LogStream.STDOUT]
        lost = 100_000 - len(kept)
        assert kept == [str(n) for n in range(1, len(kept) + 1)]
        assert lost > 50_000
        assert (gate["state"], gate["reason"]) == (
            "failed",
            f"exit code 0, but {lost} lines of output lost: {FLOOR}",
        )
        assert system_texts(lines)[1:] == [
            f"{lost} log lines were lost: {FLOOR}",
            f"step 'Flood' finished: exit code 0, but {lost} lines of output lost: {FLOOR}",
        ]
        assert (await agent.status("t-full", EVERYTHING_READ))["state"] == "failed"
        await agent.runner.shutdown(1)
        assert '"state":"failed"' in (state / "tasks" / "t-full" / "task.json").read_text()


async def test_lines_printed_while_the_disk_is_full_are_counted_and_told_once_space_returns(
    tmp_path: Path,
) -> None:
    """A step fills its disk, prints 1000 lines, frees the space, prints one more: the log tells of the 1000
    lost lines before that last line, and the step fails although it exited 0."""
    body = "head -c 8M /dev/zero > fill 2>/dev/null; seq 1 1000; sleep 1; rm fill; echo after"
    with tmpfs(tmp_path / "state", "4m") as state:
        agent = Agent(state)
        gate = await run_step(agent, "t-gap", body)
        assert (gate["state"], gate["reason"]) == (
            "failed",
            f"exit code 0, but 1000 lines of output lost: {FLOOR}",
        )
        shown = texts(await agent.log("t-gap"))
        assert shown[1:] == [
            f"1000 log lines were lost: {FLOOR}",
            "after",
            f"step 'Flood' finished: {gate['reason']}",
        ]
        await agent.runner.shutdown(1)


async def test_a_deployment_whose_step_lost_lines_to_a_full_disk_fails_saying_so(
    live_server: LiveServer, tentacles: Tentacles, mode: str, tmp_path: Path
) -> None:
    """End to end, in both modes: a tentacle whose home is a 4 MiB tmpfs runs a step that fills it,
    prints 1000 lines, frees it and prints one more; the server's task fails naming the lost lines,
    and its log carries the tentacle's note."""
    body = "head -c 8M /dev/zero > fill 2>/dev/null; seq 1 1000; sleep 1; rm fill; echo after"
    with tmpfs(tmp_path / "tentacles" / "web-01", "4m"):
        await tentacles.register("web-01", mode)
        await tentacles.start("web-01")
        await apply(live_server, {"name": "Full", "steps": [deploy_step("Fill", body)]})
        task_id = await deploy(live_server, "Full", await release(live_server, "Full"))
        done = await wait_task(live_server, task_id, timeout=60)
        await tentacles.stop_all()
    assert done["state"] == "failed", done
    assert f"exit code 0, but 1000 lines of output lost: {FLOOR}" in done["error"]
    shown = await server_texts(live_server, task_id)
    assert shown[shown.index(f"1000 log lines were lost: {FLOOR}") + 1] == "after"
    assert not [text for text in shown if text.isdigit()]  # the 1000 lines met a full disk


def test_a_write_the_disk_refuses_is_counted_cut_and_told_later(tmp_path: Path) -> None:
    """A batch that hits ENOSPC is lost whole (counted, the file cut back to its last line); the next batch
    that fits starts by saying how many lines were lost and why."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        log_file = TaskLog(disk / "log.jsonl")
        assert log_file.append(1.0, LogStream.SYSTEM, "", "before") is not None
        filler = disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"\0" * 65536)
        big = [(2.0, LogStream.SYSTEM, "", "y" * 60_000)] * 3
        assert log_file.append_many(big) == []
        assert (log_file.lost, log_file.lost_reason) == (3, "No space left on device")
        assert log_file.size == (disk / "log.jsonl").stat().st_size
        filler.unlink()
        written = log_file.append_many([(3.0, LogStream.SYSTEM, "", "after")])
        assert [(line.seq, line.text) for line in written] == [
            (2, "3 log lines were lost: No space left on device"),
            (3, "after"),
        ]
        log_file.close()
