"""Helpers for tests with a rogue tentacle (rigs/rogue_agent.py) next to real ones."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from rigs.rogue_agent import Behaviour, RogueAgent
from tests.conftest import LiveServer, eventually
from tests.deploying import apply, deploy, release, step


async def rogue(
    live: LiveServer, root: Path, name: str, mode: str, behaviours: dict[str, Behaviour], role: str = "web"
) -> RogueAgent:
    """Register a rogue tentacle called ``name`` and start it; the server sees it online."""
    agent = RogueAgent(root / name, behaviours)
    await agent.register(live.url, live.token(), live.thumbprint, name, mode=mode, port=0, role=role)
    await agent.start()

    async def online() -> bool:
        return live.server.fleet.is_online(name)

    await eventually(online, 15)
    return agent


async def deploy_script(live: LiveServer, project: str, body: str, machines: list[str] | None = None) -> str:
    """A one-step project running ``body`` on role web, released and deployed; the task id."""
    await apply(live, {"name": project, "steps": [step("Run", body)]})
    return await deploy(live, project, await release(live, project), machines=machines)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    """The log lines (messages) of the event ``name``."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(name + " ")]


def target(task: dict[str, Any], name: str) -> dict[str, Any]:
    """One target of a task view."""
    return next(t for t in task["targets"] if t["machineName"] == name)


def quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the server's warnings (the events the tests look for)."""
    caplog.set_level(logging.INFO)
