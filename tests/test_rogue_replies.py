"""Issue 15, item 2: every read from an agent is bounded, in size and in rate.

A rogue tentacle (rigs/rogue_agent.py, a registered identity) answers the server's calls
with too much or too slowly, in both modes. The server refuses the answer, fails that
target in its task with the reason, closes the connection, and logs one line naming the
machine; its memory does not follow a huge answer (a server process, measured in /proc).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from rigs.instances import Server, proc_stats, wait_until
from rigs.rogue_agent import Behaviour, RogueAgent
from server_shim.dispatch.reply_limits import GRACE
from tentacle.protocol.messages import MAX_MESSAGE_BYTES
from tests.conftest import LiveServer
from tests.deploying import wait_task
from tests.rogues import deploy_script, events, quiet, rogue, target

MIB = 1024 * 1024


def test_a_huge_ping_answer_is_refused_and_the_server_memory_does_not_follow(tmp_path: Path) -> None:
    """A listening rogue answering the health ping with 600 MB (chunked, then with a Content-Length)
    is refused at the limit with `agent.reply_too_large machine=...`, and the server's peak RSS stays
    far below the answer's size."""
    server = Server(tmp_path / "server")
    server.init()
    server.start()
    try:
        agent = RogueAgent(tmp_path / "rogue", {"ping": Behaviour("huge", size=600 * MIB, sized=False)})

        async def run() -> None:
            token = server.cli("token", "create")
            thumbprint = server.cli("show-thumbprint")
            await agent.register(server.url, token, thumbprint, "rogue", mode="listening", port=0)
            await agent.start()
            before = proc_stats(server.pid).peak_rss
            log = server.log
            await asyncio.to_thread(
                wait_until, lambda: log.read_text().count("agent.reply_too_large machine=rogue") >= 1, 60
            )
            agent.behaviours["ping"] = Behaviour("huge", size=600 * MIB, sized=True)
            await asyncio.to_thread(
                wait_until, lambda: log.read_text().count("agent.reply_too_large machine=rogue") >= 2, 60
            )
            after = proc_stats(server.pid).peak_rss
            await agent.stop()
            assert after - before < 64 * MIB, f"peak RSS grew by {(after - before) / MIB:.0f} MiB"

        asyncio.run(run())
        text = server.log.read_text()
        assert "answered ping with more than 65536 bytes" in text
        assert f"answered ping with {600 * MIB} bytes" in text
        assert server.api("GET", "/api/Default/machines/v1")[1]["items"][0]["status"] == "offline"
    finally:
        server.stop()


async def test_an_oversized_status_answer_fails_the_target_and_closes_its_connection(
    live_server: LiveServer, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer to task.status over the message limit fails that target (the reason names the
    machine and the limit), is logged as agent.reply_too_large, and its connection is dropped."""
    quiet(caplog)
    size = MAX_MESSAGE_BYTES + 8 * MIB
    agent = await rogue(live_server, tmp_path, "rogue", mode, {"task.status": Behaviour("huge", size=size)})
    try:
        task_id = await deploy_script(live_server, "Big", "echo hi")
        started = time.monotonic()
        task = await wait_task(live_server, task_id, timeout=60)
        assert time.monotonic() - started < 30  # not the 120 s of an unreachable target
        assert task["state"] == "failed"
        reason = target(task, "rogue")["reason"]
        assert (
            "rogue answered task.status with" in reason and f"over the limit of {MAX_MESSAGE_BYTES}" in reason
        )
        assert "connection closed" in reason
        assert events(caplog, "agent.reply_too_large")[0].startswith("agent.reply_too_large machine=rogue ")
        if mode == "polling":
            assert any("machine.offline machine=rogue" in m for m in (r.getMessage() for r in caplog.records))
    finally:
        await agent.stop()


async def test_a_dribbled_answer_is_cut_and_fails_the_target(
    live_server: LiveServer, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer sent a byte at a time is cut once it falls behind the minimum rate (after the
    grace), with agent.reply_too_slow naming the machine, and the target fails with that reason."""
    quiet(caplog)
    agent = await rogue(
        live_server, tmp_path, "rogue", mode, {"task.status": Behaviour("dribble", delay=0.05)}
    )
    try:
        task_id = await deploy_script(live_server, "Slow", "echo hi")
        started = time.monotonic()
        task = await wait_task(live_server, task_id, timeout=60)
        assert time.monotonic() - started < GRACE + 15
        assert task["state"] == "failed"
        assert "rogue answered task.status too slowly" in target(task, "rogue")["reason"]
        assert events(caplog, "agent.reply_too_slow")[0].startswith("agent.reply_too_slow machine=rogue ")
    finally:
        await agent.stop()


async def test_a_well_behaved_rogue_passes(live_server: LiveServer, tmp_path: Path, mode: str) -> None:
    """The rogue's normal answers are what a tentacle sends: a task to it succeeds (the double is sound)."""
    agent = await rogue(live_server, tmp_path, "rogue", mode, {})
    try:
        task = await wait_task(live_server, await deploy_script(live_server, "Fine", "echo hi"), timeout=30)
        assert task["state"] == "success", task
    finally:
        await agent.stop()
