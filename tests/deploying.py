"""Helpers for deployment tests: apply a project, release it, deploy, wait for the end."""

from __future__ import annotations

import itertools
from typing import Any

from tests.conftest import LiveServer, eventually

_versions = itertools.count(1)


def bash(body: str) -> dict[str, str]:
    """A bash script block."""
    return {"syntax": "bash", "body": body}


def step(name: str, body: str, roles: tuple[str, ...] = ("web",), **extra: Any) -> dict[str, Any]:
    """A script step of a process document."""
    return {"name": name, "roles": list(roles), "script": bash(body), **extra}


async def apply(live: LiveServer, doc: dict[str, Any]) -> None:
    """PUT the project."""
    status, body = await live.api("PUT", f"/api/Default/projects/{doc['name']}/v1", doc)
    assert status in (200, 201), body


async def release(live: LiveServer, project: str, version: str | None = None) -> str:
    """Create a release; returns its version."""
    version = version or f"1.0.{next(_versions)}"
    body = {"projectName": project, "releaseVersion": version}
    status, answer = await live.api("POST", "/api/Default/releases/create/v1", body)
    assert status == 201, answer
    return version


async def deploy(
    live: LiveServer, project: str, version: str, environment: str = "Dev", machines: list[str] | None = None
) -> str:
    """Start a deployment; returns the task id."""
    body: dict[str, Any] = {
        "projectName": project,
        "releaseVersion": version,
        "environmentNames": [environment],
    }
    if machines:
        body["machineNames"] = machines
    status, answer = await live.api("POST", "/api/Default/deployments/create/untenanted/v1", body)
    assert status == 201, answer
    return str(answer["taskId"])


async def task(live: LiveServer, task_id: str) -> dict[str, Any]:
    """GET the task."""
    status, body = await live.api("GET", f"/api/Default/tasks/{task_id}/v1")
    assert status == 200, body
    return dict(body)


async def wait_task(
    live: LiveServer,
    task_id: str,
    timeout: float = 30.0,
    states: tuple[str, ...] = ("success", "failed", "cancelled"),
) -> dict[str, Any]:
    """Poll the task until it reaches one of `states`; returns it."""
    seen: dict[str, Any] = {}

    async def ended() -> bool:
        seen.update(await task(live, task_id))
        return seen["state"] in states

    await eventually(ended, timeout, what=lambda: f"task {task_id} is {seen}")
    return seen


async def log_lines(live: LiveServer, task_id: str) -> list[dict[str, Any]]:
    """Every log line of the task."""
    since, lines = 0, []
    while True:
        status, page = await live.api("GET", f"/api/Default/tasks/{task_id}/log/v1?since={since}")
        assert status == 200, page
        lines.extend(page["items"])
        since = page["nextSince"]
        if not page["more"]:
            return lines


async def texts(live: LiveServer, task_id: str, machine: str | None = None) -> list[str]:
    """The text of every log line (of one machine)."""
    return [
        line["text"]
        for line in await log_lines(live, task_id)
        if machine is None or line["machineName"] == machine
    ]
