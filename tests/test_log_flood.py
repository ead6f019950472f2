"""Issue 15, item 4 (the server's side): a flood of output is capped, and never holds up a cancel.

A rogue tentacle (rigs/rogue_agent.py) floods: every task.status answer carries 1,000
lines and says more are waiting. The server keeps `tasks.log_limit_bytes` of each
target's log, counts the rest and says so in one line; and a cancel, whose result
arrives while thousands of lines are still waiting, ends the task at once. Storage
speed and live lag: `python -m bench logs` (README, Performance).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rigs.rogue_agent import Behaviour
from server_shim import server_config
from server_shim.server_config import Tasks
from server_shim.store.log_rows import LINE_OVERHEAD
from tentacle.common.paths import InstancePaths
from tests.conftest import LiveServer, eventually, start_server, stop_server
from tests.deploying import log_lines, wait_task
from tests.rogues import deploy_script, rogue

LIMIT = 256 * 1024


@pytest.fixture
async def capped_server(server_home: InstancePaths) -> AsyncIterator[LiveServer]:
    """A server keeping 256 KiB of log per target (server-shim.toml, as an operator would set it)."""
    config = server_config.load(server_home)
    server_config.save(server_home, config.with_changes(tasks=Tasks(log_limit_bytes=LIMIT)))
    live = await start_server(server_home)
    yield live
    await stop_server(live)


async def test_a_targets_log_is_capped_with_one_line_saying_how_many_were_dropped(
    capped_server: LiveServer, tmp_path: Path, mode: str
) -> None:
    """20,000 lines of ~106 bytes against a 256 KiB limit: the first lines that fit are kept in
    order, the rest counted, and exactly one line says how many lines and bytes were dropped."""
    total, width = 20_000, 100
    flood = Behaviour("flood", lines=total, width=width)
    agent = await rogue(capped_server, tmp_path, "rogue", mode, {"task.status": flood})
    try:
        task_id = await deploy_script(capped_server, "Flood", "echo flood")
        assert (await wait_task(capped_server, task_id, timeout=60))["state"] == "success"
        lines = await log_lines(capped_server, task_id)
    finally:
        await agent.stop()
    kept = [line for line in lines if line["stream"] == "stdout"]
    notes = [line for line in lines if "log limit" in line["text"]]
    assert len(notes) == 1, notes
    assert notes[0]["stream"] == "system" and notes[0] == lines[-1]
    assert [line["text"].split()[0] for line in kept] == [str(i) for i in range(1, len(kept) + 1)]
    size = sum(len(line["text"]) + LINE_OVERHEAD for line in kept)
    assert LIMIT - (width + 8) < size <= LIMIT
    dropped = re.search(r": (\d+) lines \((\d+) bytes\) dropped", notes[0]["text"])
    assert dropped is not None, notes[0]
    assert int(dropped[1]) == total - len(kept)
    assert int(dropped[2]) == sum(
        len(f"{i} {'x' * width}") + LINE_OVERHEAD for i in range(len(kept) + 1, total + 1)
    )


async def test_a_cancel_is_not_held_behind_a_flood(
    live_server: LiveServer, tmp_path: Path, mode: str
) -> None:
    """While a target has hundreds of thousands of lines waiting, a cancel, and the cancelled gate it
    reports, end the task within seconds (the lines follow afterwards, or are dropped)."""
    flood = Behaviour("flood", lines=10_000_000, width=20)
    agent = await rogue(live_server, tmp_path, "rogue", mode, {"task.status": flood})
    try:
        task_id = await deploy_script(live_server, "Flood", "echo flood")

        async def flooding() -> bool:  # 3,000 lines stored already (one page read, not the whole log)
            status, page = await live_server.api("GET", f"/api/Default/tasks/{task_id}/log/v1?since=2999")
            return status == 200 and bool(page["items"])

        await eventually(flooding, 30)
        started = time.monotonic()
        status, body = await live_server.api("POST", f"/api/Default/tasks/{task_id}/cancel/v1")
        assert status == 202, body
        task = await wait_task(live_server, task_id, timeout=10)
        assert time.monotonic() - started < 5
        assert task["state"] == "cancelled"
        assert task["targets"][0]["state"] == "cancelled"  # confirmed by the rogue, not timed out
    finally:
        await agent.stop()
