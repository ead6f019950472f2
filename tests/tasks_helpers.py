"""Helpers for task runner tests: plans of bash steps, and `Agent`, the runner behind its service
layer in a temporary home, called as the server would."""

from __future__ import annotations

import time
import zipfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tentacle.agent.rpc import Service
from tentacle.protocol.messages import Request
from tentacle.protocol.plan import Plan, PlannedPackage, PlannedStep, ResolvedVariable
from tentacle.protocol.process import Script
from tentacle.protocol.wire import to_builtins
from tentacle.runner.runner import Acquire, TaskRunner

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
