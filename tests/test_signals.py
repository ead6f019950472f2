"""The daemon's signals, on a real `tentacle run` process: TERM, TERM twice, HUP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tentacle.agent import agent_config as config
from tentacle.agent.agent_config import TasksConfig
from tentacle.common.paths import InstancePaths
from tests.conftest import LiveServer, Tentacles, eventually
from tests.deploying import apply, deploy, release, step, texts, wait_task


def _run(paths: InstancePaths, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tentacle", "--home", str(paths.config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)


async def _online(live: LiveServer) -> bool:
    return live.server.fleet.is_online("web-01")


async def _started(live: LiveServer, task_id: str) -> bool:
    return "start" in await texts(live, task_id)


async def _prepare(
    live: LiveServer, tentacles: Tentacles, grace: float, body: str
) -> tuple[InstancePaths, str]:
    paths = await tentacles.register("web-01", "polling")
    config.save(paths, config.load(paths).with_changes(tasks=TasksConfig(stop_grace=grace)))
    await apply(live, {"name": "Sig", "steps": [step("Work", body, ("web",))]})
    return paths, await release(live, "Sig")


async def test_sigterm_lets_a_running_step_finish_and_exits_0(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path
) -> None:
    """SIGTERM during a short step: the step completes, the agent exits 0, the task succeeds later."""
    paths, version = await _prepare(live_server, tentacles, 30, "echo start; sleep 2; echo end")
    agent = _run(paths, tmp_path / "agent.log")
    try:
        await eventually(lambda: _online(live_server), 10)
        task_id = await deploy(live_server, "Sig", version)
        await eventually(lambda: _started(live_server, task_id), 10)
        agent.send_signal(signal.SIGTERM)
        assert await _exit_code(agent, 20) == 0
        agent = _run(paths, tmp_path / "agent.log")
        done = await wait_task(live_server, task_id, timeout=30)
        assert done["state"] == "success", done.get("error")
        assert "end" in await texts(live_server, task_id)
    finally:
        agent.kill()
        agent.wait()


async def test_sigterm_cancels_a_step_that_outlives_the_grace(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path
) -> None:
    """A step still running when the stop grace ends is cancelled cleanly and recorded as such."""
    paths, version = await _prepare(live_server, tentacles, 1, "echo start; sleep 60")
    agent = _run(paths, tmp_path / "agent.log")
    try:
        await eventually(lambda: _online(live_server), 10)
        task_id = await deploy(live_server, "Sig", version)
        await eventually(lambda: _started(live_server, task_id), 10)
        began = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert await _exit_code(agent, 30) == 0
        assert time.monotonic() - began < 15
        agent = _run(paths, tmp_path / "agent.log")
        done = await wait_task(live_server, task_id, timeout=30)
        assert done["state"] == "failed" and "tentacle stopped" in done["error"]
    finally:
        agent.kill()
        agent.wait()


async def test_second_sigterm_exits_at_once(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path
) -> None:
    """While waiting for a step to finish, a second SIGTERM ends the agent immediately."""
    pid_file = tmp_path / "script.pid"
    paths, version = await _prepare(live_server, tentacles, 60, f"echo $$ > {pid_file}; echo start; sleep 60")
    agent = _run(paths, tmp_path / "agent.log")
    try:
        await eventually(lambda: _online(live_server), 10)
        task_id = await deploy(live_server, "Sig", version)
        await eventually(lambda: _started(live_server, task_id), 10)
        agent.send_signal(signal.SIGTERM)
        await asyncio.sleep(1)
        assert agent.poll() is None  # still letting the step finish
        agent.send_signal(signal.SIGTERM)
        assert await _exit_code(agent, 5) != 0
    finally:
        agent.kill()
        agent.wait()
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # the script outlives a killed agent


async def test_sighup_reloads_the_configuration(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path
) -> None:
    """SIGHUP re-reads tentacle.toml without a restart (the log says what it now trusts)."""
    paths = await tentacles.register("web-01", "polling")
    log = tmp_path / "agent.log"
    agent = _run(paths, log)
    try:
        await eventually(lambda: _online(live_server), 10)
        extra = "ab" * 32
        conf = config.load(paths)
        config.save(
            paths,
            conf.with_changes(
                server=conf.server.__class__(
                    url=conf.server.url,
                    polling_url=conf.server.polling_url,
                    thumbprints=(*conf.server.thumbprints, extra),
                )
            ),
        )
        agent.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return "config.reloaded" in log.read_text() and extra in log.read_text()

        await eventually(reloaded, 10)
        assert agent.poll() is None and await _online(live_server)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
