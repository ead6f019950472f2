"""The operator commands: exactly one request each, and `--follow` that tells the outcome."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tentacle.common.paths import InstancePaths
from tests.conftest import (
    CountingServer,
    LiveServer,
    Tentacles,
    eventually,
    shim_command,
    start_server,
    stop_server,
)
from tests.deploying import step


@pytest.fixture
async def counted(server_home: InstancePaths) -> AsyncIterator[LiveServer]:
    """A live server whose API requests are counted."""
    live = await start_server(server_home, kind=CountingServer)
    yield live
    await stop_server(live)


@pytest.fixture
async def agents(counted: LiveServer, tmp_path: Path) -> AsyncIterator[Tentacles]:
    """Tentacles registered with the counting server."""
    fleet = Tentacles(counted, tmp_path / "tentacles")
    yield fleet
    await fleet.stop_all()


def _count(live: LiveServer) -> int:
    server = live.server
    assert isinstance(server, CountingServer)
    return len(server.requests)


async def test_each_command_is_exactly_one_request(
    counted: LiveServer, tmp_path: Path, agents: Tentacles
) -> None:
    """project apply, release create, deploy and runbook run each send one request."""
    await agents.register("web-01", "polling")
    await agents.start("web-01")
    await eventually(lambda: counted.online("web-01"), 10)
    doc = {
        "name": "Cli",
        "steps": [step("S", "echo hi", ("web",))],
        "runbooks": {"Ping": {"steps": [step("P", "echo pong", ("web",))]}},
    }
    (tmp_path / "p.json").write_text(json.dumps(doc))
    commands = [
        ("project", "apply", str(tmp_path / "p.json")),
        ("release", "create", "--project", "Cli", "--version", "2.0.0"),
        ("deploy", "--project", "Cli", "--version", "2.0.0", "--environment", "Dev"),
        ("runbook", "run", "--project", "Cli", "--runbook", "Ping", "--environment", "Dev"),
    ]
    for command in commands:
        before = _count(counted)
        code, out = await shim_command(counted, *command)
        assert code == 0, (command, out)
        assert _count(counted) - before == 1, command
    assert out.strip().startswith("T-")


async def test_follow_prints_live_output_and_fails_with_the_task(
    counted: LiveServer, agents: Tentacles
) -> None:
    """`deploy --follow` prints the log and the final state, exiting 1 when the task failed."""
    await agents.register("web-01", "listening")
    await agents.start("web-01")
    await eventually(lambda: counted.online("web-01"), 10)
    doc = {
        "name": "F",
        "steps": [step("Ok", "echo fine", ("web",)), step("Bad", "echo broken >&2; exit 4", ("web",))],
    }
    await counted.api("PUT", "/api/Default/projects/F/v1", doc)
    await counted.api(
        "POST", "/api/Default/releases/create/v1", {"projectName": "F", "releaseVersion": "1.0.0"}
    )
    code, out = await shim_command(
        counted, "deploy", "--project", "F", "--version", "1.0.0", "--environment", "Dev", "--follow"
    )
    assert code == 1
    assert "fine" in out and "broken" in out and "failed" in out
    task_id = out.split()[0]
    code, shown = await shim_command(counted, "task", "show", task_id)
    assert code == 0 and "failed" in shown and "web-01" in shown
