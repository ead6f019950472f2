"""The task runner through the service layer: real scripts, real files (restarts:
tests/test_tasks_restart.py; packages: tests/test_tasks_packages.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tentacle.protocol.masking import MASK
from tentacle.protocol.plan import ResolvedVariable
from tentacle.runner.runner import STOPPED
from tests.tasks_helpers import EVERYTHING_READ, Agent, gate_of, make_plan, step, texts
from tests.tasks_helpers import agent as agent

pytestmark = pytest.mark.timeout(30)


# --- the happy path ---------------------------------------------------------------------


async def test_gates_run_their_steps_in_order_and_the_task_ends_in_success(agent: Agent) -> None:
    """Each gate runs its steps; the task holds the slot between gates and succeeds after the last."""
    plan = make_plan(
        "t-happy",
        [
            step(0, "Open VPN", "echo vpn up", phase="preAcquisition"),
            step(1, "Deploy web", "echo deploying; echo careful >&2"),
            step(3, "Smoke test", "echo ok"),
        ],
    )
    assert await agent.start(plan) == "running"
    assert await agent.run_gate("t-happy", 0, "preAcquisition") == {
        "index": 0,
        "name": "preAcquisition",
        "state": "success",
        "reason": "exit code 0",
    }
    assert (await agent.run_gate("t-happy", 1, "acquisition"))["state"] == "success"
    assert (await agent.run_gate("t-happy", 2, "step:1"))["state"] == "success"
    assert (await agent.status("t-happy"))["state"] == "running"
    assert (await agent.run_gate("t-happy", 3, "step:3"))["reason"] == "exit code 0"
    final = await agent.until("t-happy", lambda s: s["state"] == "success")
    assert [gate["state"] for gate in final["gates"]] == ["success"] * 4

    lines = await agent.log("t-happy")
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert texts(lines, "stdout") == ["vpn up", "deploying", "ok"]
    assert texts(lines, "stderr") == ["careful"]
    assert "step 'Open VPN' started" in texts(lines, "system")
    assert "step 'Smoke test' finished: exit code 0" in texts(lines, "system")
    assert {line["step"] for line in lines if line["text"] == "careful"} == {"Deploy web"}
    assert all(isinstance(line["time"], float) for line in lines)


async def test_long_poll_wakes_when_a_line_is_printed_and_waits_otherwise(agent: Agent) -> None:
    """A status call with wait=5 returns within 0.5 s of a new line; without news it waits."""
    await agent.start(make_plan("t-poll", [step(1, "Slow", "sleep 1; echo late; sleep 1")]))
    await agent.gate("t-poll", 2, "step:1")
    started = await agent.line("t-poll", "step 'Slow' started")
    version = (await agent.status("t-poll", started["seq"]))["version"]

    answer = await agent.status("t-poll", started["seq"], version, wait=5)
    arrived = time.time()
    assert texts(answer["log"]) == ["late"]
    assert arrived - answer["log"][0]["time"] < 0.5

    await agent.finished_gate("t-poll", 2)
    quiet = await agent.status("t-poll", EVERYTHING_READ)
    before = time.monotonic()
    answer = await agent.status("t-poll", EVERYTHING_READ, quiet["version"], wait=0.3)
    assert time.monotonic() - before >= 0.3
    assert answer["log"] == []


async def test_a_step_prints_more_lines_than_one_answer_holds(tmp_path: Path) -> None:
    """Answers hold at most 1000 lines and say so; after a restart the lines come from the file."""
    agent = Agent(tmp_path / "state")
    await agent.start(make_plan("t-many", [step(1, "Count", "seq 1 1500")]))
    await agent.run_gate("t-many", 2, "step:1")
    first = await agent.status("t-many", 0)
    assert len(first["log"]) == 1000
    assert first["more"] is True
    lines = await agent.log("t-many")
    assert texts(lines, "stdout") == [str(n) for n in range(1, 1501)]
    await agent.runner.shutdown(1)

    again = Agent(tmp_path / "state")
    assert await again.log("t-many") == lines
    middle = await again.status("t-many", 1200)
    assert [line["seq"] for line in middle["log"]] == list(range(1201, len(lines) + 1))
    await again.runner.shutdown(1)


# --- what scripts see ---------------------------------------------------------------------


async def test_sensitive_values_are_masked_in_every_line_and_on_disk(agent: Agent) -> None:
    """A sensitive value never appears in script output, system lines, or log.jsonl."""
    secret = "s3cret-pw"
    variables = [ResolvedVariable("DbPassword", secret, sensitive=True)]
    plan = make_plan("t-mask", [step(1, f"Deploy {secret}", 'echo "pw=$DbPassword"')], variables)
    await agent.start(plan)
    assert (await agent.run_gate("t-mask", 2, "step:1"))["state"] == "success"
    lines = await agent.log("t-mask")
    assert texts(lines, "stdout") == [f"pw={MASK}"]
    assert f"step 'Deploy {MASK}' started" in texts(lines, "system")
    assert secret not in json.dumps(lines)
    assert secret not in (agent.state_dir / "tasks" / "t-mask" / "log.jsonl").read_text()


async def test_scripts_see_variables_and_tentacle_variables_in_the_work_folder(agent: Agent) -> None:
    """Variables (with shell-safe names) and TENTACLE_* are in the environment; cwd is the work folder."""
    variables = [ResolvedVariable("Greeting", "hello"), ResolvedVariable("Db.Name", "shop")]
    body = (
        'echo "$Greeting $Db_Name"; echo "$TENTACLE_MACHINE_NAME $TENTACLE_ENVIRONMENT";'
        ' echo "$TENTACLE_PROJECT $TENTACLE_RELEASE_VERSION $TENTACLE_TASK_ID"; pwd'
    )
    await agent.start(make_plan("t-env", [step(1, "Show", body)], variables))
    await agent.run_gate("t-env", 2, "step:1")
    assert texts(await agent.log("t-env"), "stdout") == [
        "hello shop",
        "web-01 Production",
        "OctoPetShop 1.2.3 t-env",
        str((agent.state_dir / "work" / "t-env").resolve()),
    ]


# --- idempotence and the slot -----------------------------------------------------------


async def test_start_and_gate_are_idempotent(agent: Agent, tmp_path: Path) -> None:
    """A repeated start changes nothing; a gate sent again (at once, or after it ran) runs its step once."""
    runs = tmp_path / "runs"
    plan = make_plan("t-idem", [step(1, "Append", f"echo run >> {runs}"), step(2, "Then", "true")])
    assert await agent.start(plan) == "running"
    version = (await agent.status("t-idem"))["version"]
    assert await agent.start(plan) == "running"
    assert (await agent.status("t-idem"))["version"] == version

    await asyncio.gather(*(agent.gate("t-idem", 2, "step:1") for _ in range(3)))
    assert (await agent.finished_gate("t-idem", 2))["state"] == "success"
    await agent.gate("t-idem", 2, "step:1")  # the task still holds the slot, waiting for step:2
    await asyncio.sleep(0.3)
    assert (await agent.status("t-idem"))["state"] == "running"
    assert runs.read_text() == "run\n"
    await agent.run_gate("t-idem", 3, "step:2")
    assert await agent.start(plan) == "success"
    error = await agent.error("task.gate", taskId="t-idem", gateIndex=2, gateName="step:9")
    assert "is 'step:1'" in error["message"]


async def test_one_task_at_a_time_in_arrival_order(agent: Agent, tmp_path: Path) -> None:
    """A second task waits queued, with its gate remembered, until the first has ended."""
    order = tmp_path / "order"
    await agent.start(make_plan("t-first", [step(1, "A", f"echo first >> {order}")]))
    assert await agent.start(make_plan("t-second", [step(1, "B", f"echo second >> {order}")])) == "queued"
    await agent.gate("t-second", 2, "step:1")
    await asyncio.sleep(0.3)
    waiting = await agent.status("t-second")
    assert (waiting["state"], waiting["gates"], order.exists()) == ("queued", [], False)

    await agent.run_gate("t-first", 2, "step:1")
    assert (await agent.finished_gate("t-second", 2))["state"] == "success"
    assert (await agent.status("t-first"))["state"] == "success"
    assert (await agent.status("t-second"))["state"] == "success"
    assert order.read_text() == "first\nsecond\n"


async def test_a_failed_step_fails_its_gate_and_releases_the_slot(agent: Agent, tmp_path: Path) -> None:
    """exit 3 fails the gate with its exit code; the task failed, later gates do not run."""
    never = tmp_path / "never"
    steps = [step(1, "Break", "echo trying; exit 3"), step(2, "After", f"touch {never}")]
    await agent.start(make_plan("t-fail", steps))
    assert await agent.start(make_plan("t-next", [step(1, "Next", "true")])) == "queued"
    assert await agent.run_gate("t-fail", 2, "step:1") == {
        "index": 2,
        "name": "step:1",
        "state": "failed",
        "reason": "exit code 3",
    }
    assert (await agent.until("t-next", lambda s: s["state"] == "running"))["state"] == "running"
    assert (await agent.status("t-fail"))["state"] == "failed"
    late = await agent.run_gate("t-fail", 3, "step:2")
    assert late["state"] == "failed"
    assert late["reason"].startswith("not run")
    assert not never.exists()


# --- stopping -------------------------------------------------------------------------


async def test_cancel_stops_a_running_step_promptly(agent: Agent) -> None:
    """Cancel terminates a `sleep 30` step at once; queued tasks are cancelled at once too."""
    await agent.start(make_plan("t-long", [step(1, "Sleep", "echo sleeping; sleep 30")]))
    await agent.start(make_plan("t-queued", [step(1, "Never", "true")]))
    await agent.gate("t-queued", 2, "step:1")
    await agent.gate("t-long", 2, "step:1")
    await agent.line("t-long", "sleeping")

    assert await agent.call("task.cancel", taskId="t-queued") == {"taskId": "t-queued", "state": "cancelled"}
    assert gate_of(await agent.status("t-queued"), 2) == {
        "index": 2,
        "name": "step:1",
        "state": "cancelled",
        "reason": "not run: the task was cancelled",
    }

    before = time.monotonic()
    await agent.call("task.cancel", taskId="t-long")
    gate = await agent.finished_gate("t-long", 2)
    assert time.monotonic() - before < 3
    assert (gate["state"], gate["reason"]) == ("cancelled", "cancelled by the server")
    assert await agent.call("task.cancel", taskId="t-long") == {"taskId": "t-long", "state": "cancelled"}
    assert any("SIGTERM" in text for text in texts(await agent.log("t-long"), "system"))


async def test_shutdown_cancels_a_long_step_and_a_queued_gate_survives(tmp_path: Path) -> None:
    """shutdown(grace) records a long step as cancelled 'tentacle stopped'; queued work runs after restart."""
    agent = Agent(tmp_path / "state")
    await agent.start(make_plan("t-stop", [step(1, "Sleep", "echo sleeping; sleep 30")]))
    await agent.start(make_plan("t-later", [step(1, "Later", "echo later")]))
    await agent.gate("t-later", 2, "step:1")
    await agent.gate("t-stop", 2, "step:1")
    await agent.line("t-stop", "sleeping")

    before = time.monotonic()
    await agent.runner.shutdown(0.3)
    assert time.monotonic() - before < 3
    expected = {"index": 2, "name": "step:1", "state": "cancelled", "reason": STOPPED}
    assert gate_of(await agent.status("t-stop"), 2) == expected

    again = Agent(tmp_path / "state")
    stopped = await again.status("t-stop")
    assert (stopped["state"], gate_of(stopped, 2)) == ("cancelled", expected)
    assert (await again.finished_gate("t-later", 2))["state"] == "success"
    assert "later" in texts(await again.log("t-later"), "stdout")
    await again.runner.shutdown(1)


async def test_finish_ends_the_task_and_removes_its_work_folder(agent: Agent) -> None:
    """task.finish after the last gate keeps the task's success and deletes <state>/work/<taskId>."""
    await agent.start(make_plan("t-finish", [step(1, "Write", "echo x > file")]))
    await agent.run_gate("t-finish", 2, "step:1")
    work = agent.state_dir / "work" / "t-finish"
    assert (work / "file").is_file()
    assert await agent.call("task.finish", taskId="t-finish") == {"taskId": "t-finish", "state": "success"}
    assert not work.exists()
    assert await agent.call("task.finish", taskId="t-finish") == {"taskId": "t-finish", "state": "success"}


async def test_finish_during_a_step_stops_it_and_ends_the_task_cancelled(agent: Agent) -> None:
    """task.finish while a step runs terminates it; the gate and the task read cancelled."""
    await agent.start(make_plan("t-cut", [step(1, "Sleep", "echo sleeping; sleep 30")]))
    await agent.gate("t-cut", 2, "step:1")
    await agent.line("t-cut", "sleeping")
    await agent.call("task.finish", taskId="t-cut")
    gate = await agent.finished_gate("t-cut", 2)
    assert (gate["state"], gate["reason"]) == ("cancelled", "the server finished the task")
    assert (await agent.until("t-cut", lambda s: s["state"] == "cancelled"))["state"] == "cancelled"
    work = agent.state_dir / "work" / "t-cut"
    for _ in range(40):  # removed just after the gate's result is saved
        if not work.exists():
            break
        await asyncio.sleep(0.05)
    assert not work.exists()


async def test_a_step_past_its_timeout_is_stopped_and_fails(agent: Agent) -> None:
    """A step running longer than timeoutSeconds is terminated and its gate fails."""
    await agent.start(make_plan("t-slow", [step(1, "Hang", "sleep 30", timeout_seconds=1)]))
    gate = await agent.run_gate("t-slow", 2, "step:1")
    assert gate["state"] == "failed"
    assert "timeout of 1 s" in gate["reason"]


# --- bad requests -------------------------------------------------------------------------


async def test_bad_requests_are_errors_and_unknown_tasks_are_reported(agent: Agent) -> None:
    """Bad plans, ids, gates and parameters get error responses; status of an unknown task is not one."""
    plan = make_plan("t-ok", [step(1, "A", "true")]).to_json()
    error = await agent.error("task.start", plan={**plan, "steps": "nope"})
    assert (error["code"], error["message"]) == (
        "MessageError",
        "params.plan.steps: expected a list, got a string",
    )
    error = await agent.error("task.start", plan={**plan, "taskId": "../escape"})
    assert error["message"].startswith("params.plan.taskId: must be 1-200 letters")
    steps = make_plan("t-ok", [step(2, "B", "true"), step(3, "A", "true")]).to_json()["steps"]
    steps[1]["index"] = 1
    error = await agent.error("task.start", plan={**plan, "steps": steps})
    assert error["message"] == "params.plan.steps[1].index: must be greater than the previous step's"
    del steps[0]["phase"]
    error = await agent.error("task.start", plan={**plan, "steps": steps})
    assert error["message"].startswith("params.plan.steps[0].phase: required")
    assert not (agent.state_dir / "escape").exists()

    error = await agent.error("task.gate", taskId="t-nobody", gateIndex=0, gateName="preAcquisition")
    assert error["code"] == "UnknownTaskError"
    await agent.call("task.start", plan=plan)
    error = await agent.error("task.gate", taskId="t-ok", gateIndex=0, gateName="deploy everything")
    assert "gateName" in error["message"]
    error = await agent.error("task.status", taskId="t-ok", logSince=0, version=0, wait=26)
    assert "wait" in error["message"]

    assert await agent.status("t-nobody") == {
        "taskId": "t-nobody",
        "state": "unknown-task",
        "version": 0,
        "gates": [],
        "log": [],
        "more": False,
    }
    assert (await agent.call("task.cancel", taskId="t-nobody"))["state"] == "unknown-task"
