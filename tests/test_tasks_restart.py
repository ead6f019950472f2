"""The task runner across restarts: a step cut by a crash reads unknown and never runs again,
unreadable state is skipped and old tasks pruned, and a log cut mid-line keeps its numbering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tentacle.protocol.rpc_messages import LogStream
from tentacle.runner.task_log import TaskLog
from tests.tasks_helpers import Agent, gate_of, make_plan, step, texts
from tests.tasks_helpers import agent as agent

pytestmark = pytest.mark.timeout(30)


# --- restart --------------------------------------------------------------------------

CRASHING_AGENT = """
import asyncio, json, sys
from pathlib import Path
from tentacle.protocol.messages import Request
from tentacle.agent.rpc import Service
from tentacle.runner.runner import TaskRunner

async def main() -> None:
    runner = TaskRunner(Path(sys.argv[1]))
    service = Service("web-01", "listening")
    runner.register(service)
    plan = json.loads(sys.argv[2])
    calls = [
        ("task.start", {"plan": plan}),
        ("task.gate", {"taskId": plan["taskId"], "gateIndex": 2, "gateName": "step:1"}),
    ]
    for number, (method, params) in enumerate(calls):
        response = await service.handle(Request.of(str(number), method, params))
        assert response.error is None, response.error
    await asyncio.sleep(60)

asyncio.run(main())
"""


@contextlib.contextmanager
def orphan_killed(pid_file: Path) -> Iterator[None]:
    """Kill the process group of the script that outlived its agent (kill -9 does not reach it)."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


async def test_a_step_interrupted_by_a_crash_is_unknown_and_never_run_again(tmp_path: Path) -> None:
    """After kill -9 mid-step a new runner reports the gate unknown, does not rerun it, frees the slot."""
    state = tmp_path / "state"
    runs, pid_file = tmp_path / "runs", tmp_path / "pid"
    body = f"echo $$ > {pid_file}; echo run >> {runs}; echo before-crash; sleep 30"
    plan = make_plan("t-crash", [step(1, "Deploy web", body)])
    with orphan_killed(pid_file):
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CRASHING_AGENT, str(state), json.dumps(plan.to_json())
        )
        try:
            log_file = state / "tasks" / "t-crash" / "log.jsonl"
            for _ in range(200):
                if log_file.is_file() and "before-crash" in log_file.read_text():
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the first agent never ran the step")
        finally:
            child.kill()
            await child.wait()

        agent = Agent(state)
        status = await agent.status("t-crash")
        reason = "tentacle restarted while step 'Deploy web' was running; its result is unknown"
        assert status["state"] == "failed"
        assert gate_of(status, 2) == {"index": 2, "name": "step:1", "state": "unknown", "reason": reason}
        lines = await agent.log("t-crash")
        assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
        assert texts(lines)[-2:] == ["before-crash", reason]

        await agent.gate("t-crash", 2, "step:1")
        assert await agent.start(make_plan("t-after", [step(1, "Next", "true")])) == "running"
        await asyncio.sleep(0.3)
        assert runs.read_text() == "run\n"
        await agent.runner.shutdown(1)


async def test_unreadable_state_is_skipped_and_old_tasks_are_pruned(tmp_path: Path) -> None:
    """A corrupt task.json does not stop startup; only the newest `keep` ended tasks are kept."""
    state = tmp_path / "state"
    agent = Agent(state, keep=2)
    for number in range(4):
        await agent.start(make_plan(f"t-old{number}", [step(1, "Never", "true")]))
        await agent.call("task.cancel", taskId=f"t-old{number}")
    await agent.start(make_plan("t-kept", [step(1, "Never", "true")]))
    await agent.runner.shutdown(1)
    assert (await agent.status("t-old0"))["state"] == "unknown-task"
    assert sorted(path.name for path in (state / "tasks").iterdir()) == ["t-kept", "t-old2", "t-old3"]

    broken = state / "tasks" / "t-broken"
    broken.mkdir()
    (broken / "task.json").write_text('{"format": 1, "plan": ')
    again = Agent(state, keep=2)
    assert (await again.status("t-broken"))["state"] == "unknown-task"
    assert (await again.status("t-old3"))["state"] == "cancelled"
    assert (await again.status("t-kept"))["state"] == "running"
    await again.runner.shutdown(1)


def test_a_log_cut_mid_line_by_a_crash_continues_its_numbering(tmp_path: Path) -> None:
    """Lines written after the last save are counted; a torn last line is cut off."""
    path = tmp_path / "log.jsonl"
    first = TaskLog(path)
    for number in range(3):
        first.append(float(number), LogStream.STDOUT, "Step", f"line {number}")
    saved_seq, saved_size = 2, len(path.read_bytes().splitlines(keepends=True)[0])
    first.close()
    with path.open("ab") as file:
        file.write(b'{"seq": 4, "time": 3.0, "stre')

    log = TaskLog.recover(path, saved_seq, saved_size)
    assert (log.next_seq, log.size) == (4, path.stat().st_size)
    log.append(4.0, LogStream.STDOUT, "Step", "after restart")
    log.close()
    lines, more = log.read_after(0, 10, 1000)
    assert ([line.seq for line in lines], more) == ([1, 2, 3, 4], False)
    assert lines[-1].text == "after restart"
