"""The daemon's signals, on a real `tentacle run` process: TERM, TERM twice, HUP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from rigs.instances import Server, wait_until
from tentacle.agent import agent_config as config
from tentacle.agent.agent_config import TasksConfig
from tentacle.common.paths import InstancePaths
from tests.conftest import LiveServer, Tentacles, eventually, run_tentacle
from tests.deploying import apply, deploy, release, step, texts, wait_task


async def _exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)


async def _logged(log: Path, text: str) -> bool:
    return text in log.read_text()


async def _started(live: LiveServer, task_id: str) -> bool:
    return "start" in await texts(live, task_id)


async def _prepare(
    live: LiveServer, tentacles: Tentacles, grace: float, body: str
) -> tuple[InstancePaths, str]:
    paths = await tentacles.register("web-01", "polling")
    config.save(paths, config.load(paths).with_changes(tasks=TasksConfig(stop_grace=grace)))
    await apply(live, {"name": "Sig", "steps": [step("Work", body, ("web",))]})
    return paths, await release(live, "Sig")


async def _step_running(live: LiveServer, version: str) -> str:
    """Once the agent is online, deploy; returns the task id once its step printed 'start'."""
    await eventually(lambda: live.online("web-01"), 10)
    task_id = await deploy(live, "Sig", version)
    await eventually(lambda: _started(live, task_id), 10)
    return task_id


async def test_sigterm_lets_a_running_step_finish_and_exits_0(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path
) -> None:
    """SIGTERM during a short step: the step completes, the agent exits 0, the task succeeds later."""
    paths, version = await _prepare(live_server, tentacles, 30, "echo start; sleep 2; echo end")
    agent = run_tentacle(paths.config, tmp_path / "agent.log")
    try:
        task_id = await _step_running(live_server, version)
        agent.send_signal(signal.SIGTERM)
        assert await _exit_code(agent, 20) == 0
        agent = run_tentacle(paths.config, tmp_path / "agent.log")
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
    agent = run_tentacle(paths.config, tmp_path / "agent.log")
    try:
        task_id = await _step_running(live_server, version)
        began = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert await _exit_code(agent, 30) == 0
        assert time.monotonic() - began < 15
        agent = run_tentacle(paths.config, tmp_path / "agent.log")
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
    log = tmp_path / "agent.log"
    agent = run_tentacle(paths.config, log)
    try:
        await _step_running(live_server, version)
        agent.send_signal(signal.SIGTERM)
        await eventually(lambda: _logged(log, "agent.stopping"), 10)
        agent.send_signal(signal.SIGTERM)
        # Exit 1 from `agent.killed`: it was still letting the step finish when the second came
        # (one that had ended on the first would have exited 0).
        assert await _exit_code(agent, 5) == 1
        assert "agent.killed" in log.read_text()
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
    agent = run_tentacle(paths.config, log)
    try:
        await eventually(lambda: live_server.online("web-01"), 10)
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
        assert agent.poll() is None and live_server.online("web-01")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)


def test_sighup_leaves_the_server_serving(tmp_path: Path) -> None:
    """`systemctl reload` (SIGHUP) must not end the server: it logs that nothing is re-read."""
    server = Server(tmp_path / "server")
    server.init()
    server.start()
    try:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "server.reload_ignored" in server.log.read_text(), 30, what="the reload logged")
        assert server.proc.poll() is None
        assert server.call("GET", "/api/Default/machines/v1")["items"] == []
    finally:
        server.stop()
