"""Issue 15, item 3: no target, and no error of the server's, can leave a task running forever.

A rogue tentacle (rigs/rogue_agent.py) holds its gate open and ignores a cancel; a real
tentacle runs next to it. A cancel still ends the task within 15 s (the rogue's part
reads "cancel not confirmed"); removing the rogue's machine ends its part in the running
task ("machine removed"), its queued task fails at once instead of waiting, and a later
task for the healthy machine runs. Errors of the server's own storage: tests/test_disk_full.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from rigs.rogue_agent import Behaviour
from tentacle.protocol.coordinator import CANCEL_NOT_CONFIRMED
from tests.conftest import LiveServer, Tentacles
from tests.deploying import apply, deploy, release, step, wait_task
from tests.rogues import rogue, target

HOLD = {"task.status": Behaviour("hold"), "task.cancel": Behaviour("silent")}


async def _both(live: LiveServer, project: str, body: str, machines: list[str] | None = None) -> str:
    """A one-step project on role web (the rogue and the real tentacle), deployed; the task id."""
    await apply(live, {"name": project, "steps": [step("Run", body)]})
    return await deploy(live, project, await release(live, project), machines=machines)


async def _running(live: LiveServer, task_id: str, name: str) -> None:
    """Wait until ``name`` runs its part of the task."""
    from tests.conftest import eventually
    from tests.deploying import task

    async def check() -> bool:
        return bool(target(await task(live, task_id), name)["state"] == "running")

    await eventually(check, 20)


async def test_cancel_ends_a_task_within_15_s_whatever_its_targets_do(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path, mode: str
) -> None:
    """A target that never confirms a cancel (its gate held, the cancel unanswered) does not keep the
    task running: it ends cancelled within 15 s, the rogue reads unknown "cancel not confirmed",
    the real tentacle cancelled."""
    await tentacles.register("web-01", mode)
    await tentacles.start("web-01")
    agent = await rogue(live_server, tmp_path, "rogue", mode, HOLD)
    try:
        task_id = await _both(live_server, "Hold", "sleep 60")
        await _running(live_server, task_id, "rogue")
        await _running(live_server, task_id, "web-01")
        started = time.monotonic()
        status, body = await live_server.api("POST", f"/api/Default/tasks/{task_id}/cancel/v1")
        assert status == 202, body
        task = await wait_task(live_server, task_id, timeout=15)
        assert time.monotonic() - started < 15
        assert task["state"] == "cancelled"
        assert target(task, "rogue")["state"] == "unknown"
        assert target(task, "rogue")["reason"] == CANCEL_NOT_CONFIRMED
        assert target(task, "web-01")["state"] == "cancelled"
        assert f"{CANCEL_NOT_CONFIRMED} by rogue" in task["error"]
        assert "task.cancel" in agent.calls  # it was asked
    finally:
        await agent.stop()


async def test_removing_a_machine_ends_its_part_and_nothing_waits_on_it(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path, mode: str
) -> None:
    """`machines remove` of a target that holds its gate fails it in the running task ("machine
    removed"); its queued task fails at once rather than waiting forever; a later task for the
    healthy machine it shared a task with runs to success."""
    await tentacles.register("web-01", mode)
    await tentacles.start("web-01")
    agent = await rogue(live_server, tmp_path, "rogue", mode, HOLD)
    try:
        held = await _both(live_server, "Held", "echo done")
        await _running(live_server, held, "rogue")
        queued = await _both(live_server, "Queued", "echo queued", machines=["rogue"])
        later = await _both(live_server, "Later", "echo later", machines=["web-01"])
        assert (await wait_task(live_server, later, timeout=3, states=("queued",)))["state"] == "queued"
        status, body = await live_server.api("DELETE", "/api/Default/machines/rogue/v1")
        assert status == 200, body
        task = await wait_task(live_server, held, timeout=15)
        assert task["state"] == "failed"
        assert "machine removed" in target(task, "rogue")["reason"]
        assert "machine removed" in (await wait_task(live_server, queued, timeout=15))["error"]
        assert (await wait_task(live_server, later, timeout=30))["state"] == "success"
    finally:
        await agent.stop()
