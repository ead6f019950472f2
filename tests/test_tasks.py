"""The task runner through the service layer: real scripts, real files, real restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tentacle.agent.rpc import Service
from tentacle.errors import TentacleError
from tentacle.protocol.masking import MASK
from tentacle.protocol.messages import Request
from tentacle.protocol.plan import Plan, PlannedPackage, PlannedStep, ResolvedVariable
from tentacle.protocol.process import Script
from tentacle.protocol.rpc_messages import LogStream
from tentacle.protocol.wire import to_builtins
from tentacle.runner.runner import NOT_CONFIGURED, STOPPED, Acquire, TaskRunner
from tentacle.runner.task_log import TaskLog

pytestmark = pytest.mark.timeout(30)

FINAL = ("success", "failed", "unknown", "cancelled")
EVERYTHING_READ = 10**9  # a logSince no line reaches: only state changes wake the poll


def bash(body: str) -> Script:
    """A bash script."""
    return Script("bash", body)


def step(index: int, name: str, body: str | None = None, **fields: Any) -> PlannedStep:
    """A deployment step (or another phase, given ``phase=``) running ``body`` in bash."""
    return PlannedStep(index=index, name=name, script=None if body is None else bash(body), **fields)


def package(package_id: str) -> PlannedPackage:
    """A pinned package; the tests' acquire functions do not check the hash."""
    return PlannedPackage(
        id=package_id, version="1.0.0", sha512="a" * 128, size=1, file_name=f"{package_id}.1.0.0.zip"
    )


def make_plan(task_id: str, steps: Sequence[PlannedStep], variables: Sequence[ResolvedVariable] = ()) -> Plan:
    """A deployment plan for machine web-01 in Production."""
    return Plan(
        task_id=task_id,
        kind="deployment",
        project_name="OctoPetShop",
        release_version="1.2.3",
        environment_name="Production",
        machine_name="web-01",
        steps=tuple(steps),
        variables=tuple(variables),
    )


class Agent:
    """A runner behind a real Service, called the way both transports call it."""

    def __init__(self, state_dir: Path, acquire: Acquire | None = None, **options: Any) -> None:
        """Load (or start) the runner state in ``state_dir``."""
        self.state_dir = state_dir
        self.runner = TaskRunner(state_dir, acquire, **options)
        self.service = Service("web-01", "listening")
        self.runner.register(self.service)
        self._ids = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One request that must succeed; returns its result."""
        self._ids += 1
        response = await self.service.handle(Request.of(str(self._ids), method, params))
        assert response.error is None, response.error
        result: dict[str, Any] = msgspec.json.decode(response.result)
        return result

    async def error(self, method: str, **params: Any) -> dict[str, Any]:
        """One request that must fail; returns the error body."""
        self._ids += 1
        response = await self.service.handle(Request.of(str(self._ids), method, params))
        assert response.error is not None, bytes(response.result)
        error: dict[str, Any] = to_builtins(response.error)
        return error

    async def start(self, plan: Plan) -> str:
        """task.start; returns the state."""
        result = await self.call("task.start", plan=plan.to_json())
        assert result["taskId"] == plan.task_id
        return str(result["state"])

    async def gate(self, task_id: str, index: int, name: str) -> None:
        """task.gate, which must be accepted."""
        assert await self.call("task.gate", taskId=task_id, gateIndex=index, gateName=name) == {
            "taskId": task_id,
            "accepted": True,
        }

    async def status(self, task_id: str, since: int = 0, version: int = 0, wait: float = 0) -> dict[str, Any]:
        """task.status."""
        return await self.call("task.status", taskId=task_id, logSince=since, version=version, wait=wait)

    async def until(
        self, task_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10
    ) -> dict[str, Any]:
        """Long-poll state changes until ``check(status)`` holds."""
        deadline = time.monotonic() + timeout
        answer = await self.status(task_id, EVERYTHING_READ)
        while not check(answer):
            if time.monotonic() > deadline:
                pytest.fail(f"condition not met within {timeout} s; last status: {answer}")
            answer = await self.status(task_id, EVERYTHING_READ, answer["version"], wait=1)
        return answer

    async def finished_gate(self, task_id: str, index: int) -> dict[str, Any]:
        """Wait until gate ``index`` has a final state; returns it."""
        answer = await self.until(task_id, lambda s: (gate_of(s, index) or {}).get("state") in FINAL)
        found = gate_of(answer, index)
        assert found is not None
        return found

    async def run_gate(self, task_id: str, index: int, name: str) -> dict[str, Any]:
        """Open a gate and wait for its result."""
        await self.gate(task_id, index, name)
        return await self.finished_gate(task_id, index)

    async def log(self, task_id: str) -> list[dict[str, Any]]:
        """Every log line so far, page by page."""
        lines: list[dict[str, Any]] = []
        while True:
            answer = await self.status(task_id, lines[-1]["seq"] if lines else 0)
            lines += answer["log"]
            if not answer["more"]:
                return lines

    async def line(self, task_id: str, text: str, timeout: float = 10) -> dict[str, Any]:
        """Wait until a line with exactly ``text`` is in the log; returns it."""
        deadline = time.monotonic() + timeout
        since = 0
        while time.monotonic() < deadline:
            answer = await self.status(task_id, since, EVERYTHING_READ, wait=1)
            for line in answer["log"]:
                if line["text"] == text:
                    return dict(line)
                since = line["seq"]
        pytest.fail(f"no line {text!r} within {timeout} s")


def gate_of(status: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The gate with this index in a status answer."""
    return next((gate for gate in status["gates"] if gate["index"] == index), None)


def texts(lines: list[dict[str, Any]], stream: str | None = None) -> list[str]:
    """The texts of log lines (of one stream)."""
    return [line["text"] for line in lines if stream is None or line["stream"] == stream]


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    """A runner on a fresh state folder, stopped at the end."""
    agent = Agent(tmp_path / "state")
    yield agent
    await agent.runner.shutdown(0)


def write_zip(path: Path, files: dict[str, str]) -> Path:
    """A real zip archive."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


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


# --- packages -----------------------------------------------------------------------------


async def test_acquisition_then_steps_use_the_extracted_package(tmp_path: Path) -> None:
    """Acquisition fetches every package; a step reads $PACKAGE_DIR; a package-only step extracts."""
    acquired: list[str] = []

    async def acquire(plan: Plan, wanted: PlannedPackage) -> Path:
        """Write a real zip for the package, as the package layer would put it in the cache."""
        acquired.append(wanted.id)
        await asyncio.sleep(0.05)
        return write_zip(tmp_path / wanted.file_name, {"readme.txt": f"hello from {wanted.id}\n"})

    agent = Agent(tmp_path / "state", acquire)
    steps = [
        step(1, "Deploy web", 'cat "$PACKAGE_DIR/readme.txt"', package=package("Web")),
        step(2, "Unpack db", package=package("Db")),
    ]
    await agent.start(make_plan("t-pkg", steps))
    gate = await agent.run_gate("t-pkg", 1, "acquisition")
    assert gate["state"] == "success", gate
    assert sorted(acquired) == ["Db", "Web"]
    assert (await agent.run_gate("t-pkg", 2, "step:1"))["state"] == "success"
    assert "hello from Web" in texts(await agent.log("t-pkg"), "stdout")
    assert await agent.run_gate("t-pkg", 3, "step:2") == {
        "index": 3,
        "name": "step:2",
        "state": "success",
        "reason": "package extracted",
    }
    extracted = agent.state_dir / "work" / "t-pkg" / "2-package" / "readme.txt"
    assert extracted.read_text() == "hello from Db\n"
    assert (await agent.status("t-pkg"))["state"] == "success"
    await agent.runner.shutdown(1)


async def test_acquisition_failures_fail_the_gate_naming_the_package(tmp_path: Path) -> None:
    """Without an acquire function, or when one package fails, the acquisition gate fails."""

    async def acquire(plan: Plan, wanted: PlannedPackage) -> Path:
        """Fail for one package, as an unreachable mirror would."""
        if wanted.id == "Db":
            raise TentacleError("every mirror failed")
        return write_zip(tmp_path / wanted.file_name, {"readme.txt": "x"})

    steps = [step(1, "Web", "true", package=package("Web")), step(2, "Db", "true", package=package("Db"))]
    unconfigured = Agent(tmp_path / "one")
    await unconfigured.start(make_plan("t-none", steps))
    gate = await unconfigured.run_gate("t-none", 1, "acquisition")
    assert (gate["state"], gate["reason"]) == ("failed", NOT_CONFIGURED)
    await unconfigured.runner.shutdown(1)

    failing = Agent(tmp_path / "two", acquire)
    await failing.start(make_plan("t-fails", steps))
    gate = await failing.run_gate("t-fails", 1, "acquisition")
    assert (gate["state"], gate["reason"]) == ("failed", "package Db 1.0.0: every mirror failed")
    assert (await failing.status("t-fails"))["state"] == "failed"
    await failing.runner.shutdown(1)


async def test_a_bad_archive_fails_the_step_without_running_its_script(tmp_path: Path) -> None:
    """A package file that is not a valid archive fails its step with the extraction error."""

    async def acquire(plan: Plan, wanted: PlannedPackage) -> Path:
        """Return a file named .zip that is not a zip."""
        bad = tmp_path / wanted.file_name
        bad.write_bytes(b"this is not a zip archive")
        return bad

    agent = Agent(tmp_path / "state", acquire)
    marker = tmp_path / "ran"
    await agent.start(make_plan("t-bad", [step(1, "Deploy", f"touch {marker}", package=package("Web"))]))
    assert (await agent.run_gate("t-bad", 1, "acquisition"))["state"] == "success"
    gate = await agent.run_gate("t-bad", 2, "step:1")
    assert gate["state"] == "failed"
    assert gate["reason"].startswith("cannot extract package Web 1.0.0: archive breaks rule 'format'")
    assert not marker.exists()
    await agent.runner.shutdown(1)


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
