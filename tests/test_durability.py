"""Restarts in the middle of a task: nothing lost, nothing run twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from server_shim.store import task_rows as task_store
from tentacle.common.paths import InstancePaths
from tests.conftest import LiveServer, Tentacles, eventually, run_tentacle, start_server, stop_server
from tests.deploying import apply, deploy, release, step, texts, wait_task


async def test_server_restart_mid_task_loses_nothing(
    server_home: InstancePaths, tmp_path: Path, mode: str
) -> None:
    """The task goes on after a server restart; every log line arrives exactly once."""
    live = await start_server(server_home)
    ports = (live.server.bound.api, live.server.bound.polling)
    fleet = Tentacles(live, tmp_path / "t")
    try:
        await fleet.register("web-01", mode)
        await fleet.start("web-01")
        await eventually(lambda: live.online("web-01"), 10)
        await apply(
            live,
            {
                "name": "R",
                "steps": [
                    step("Slow", "echo before; sleep 3; echo after", ("web",)),
                    step("Next", "echo second step", ("web",)),
                ],
            },
        )
        task_id = await deploy(live, "R", await release(live, "R"))
        await eventually(lambda: _has(live, task_id, "before"), 10)
        await stop_server(live)
        await asyncio.sleep(1)
        live = fleet.server = await start_server(server_home, *ports)
        done = await wait_task(live, task_id, timeout=40)
        assert done["state"] == "success", done
        lines = await texts(live, task_id, "web-01")
        for text in ("before", "after", "second step"):
            assert lines.count(text) == 1, lines
    finally:
        await fleet.stop_all()
        await stop_server(live)


async def _has(live: LiveServer, task_id: str, text: str) -> bool:
    return text in await texts(live, task_id)


async def test_tentacle_killed_mid_step_reports_unknown_and_never_reruns(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path, mode: str
) -> None:
    """kill -9 of the agent during a step: after restart the step is 'unknown', not run again."""
    paths = await tentacles.register("web-01", mode)
    agent = run_tentacle(paths.config, tmp_path / "agent.log")
    marker = tmp_path / "ran"
    try:
        await eventually(lambda: live_server.online("web-01"), 10)
        await apply(
            live_server,
            {"name": "K", "steps": [step("Once", f"echo $$ >> {marker}; echo running; sleep 30", ("web",))]},
        )
        task_id = await deploy(live_server, "K", await release(live_server, "K"))
        await eventually(lambda: _has(live_server, task_id, "running"), 10)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        agent = run_tentacle(paths.config, tmp_path / "agent.log")
        done = await wait_task(live_server, task_id, timeout=30)
        assert done["state"] == "failed", done
        assert "unknown" in done["error"] and "Once" in done["error"]
        assert len(marker.read_text().split()) == 1
    finally:
        agent.kill()
        agent.wait(10)
        for pid in marker.read_text().split() if marker.exists() else []:
            _kill_group(int(pid))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def test_task_state_survives_in_the_database(live_server: LiveServer, tentacles: Tentacles) -> None:
    """A finished task, its targets and its log are read back from the database, not from memory
    (SQLite in WAL mode, or PostgreSQL)."""
    await tentacles.register("web-01", "polling")
    await tentacles.start("web-01")
    await eventually(lambda: live_server.online("web-01"), 10)
    await apply(live_server, {"name": "D", "steps": [step("S", "echo kept", ("web",))]})
    task_id = await deploy(live_server, "D", await release(live_server, "D"))
    assert (await wait_task(live_server, task_id))["state"] == "success"
    record = live_server.server.db.sync(task_store.get, task_id)
    assert record.state == "success" and set(record.plans) == {"web-01"}
    lines = live_server.server.db.sync(task_store.read_log, task_id, 0)
    assert "kept" in [line["text"] for line in lines]
    if live_server.server.db.dialect == "sqlite":
        mode = live_server.server.db.sync(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
