"""Deployment options: machines, skipped steps, forced package redeployment, runAt and noRunAfter."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server_shim.store import feed_store as feed
from tentacle.common.paths import InstancePaths
from tests.conftest import LiveServer, Tentacles, eventually, start_server, stop_server
from tests.deploying import apply, release, step, task, texts, wait_task

UNTENANTED = "/api/Default/deployments/create/untenanted/v1"
TWO_STEPS = {"name": "Two", "steps": [step("One", "echo one", ("web",)), step("Two", "echo two", ("web",))]}


def _at(seconds: float) -> str:
    """An ISO 8601 time ``seconds`` from now, with its zone."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _create(live: LiveServer, body: dict[str, Any]) -> tuple[int, Any]:
    return await live.api(
        "POST",
        UNTENANTED,
        {"projectName": "Two", "releaseVersion": "1.0.0", "environmentNames": ["Dev"], **body},
    )


async def _online(live: LiveServer, tentacles: Tentacles, names: list[str], mode: str = "polling") -> None:
    for name in names:
        await tentacles.register(name, mode)
        await tentacles.start(name)

    async def online() -> bool:
        return all(live.server.fleet.is_online(name) for name in names)

    await eventually(online, 10)


async def _tasks(live: LiveServer) -> int:
    return int(
        await live.server.db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
    )


async def test_excluded_machines_and_skipped_steps(live_server: LiveServer, tentacles: Tentacles) -> None:
    """An excluded machine gets nothing; a skipped step runs nowhere; the others run as usual."""
    await _online(live_server, tentacles, ["web-01", "web-02", "web-03"])
    await apply(live_server, TWO_STEPS)
    await release(live_server, "Two", "1.0.0")
    status, answer = await _create(
        live_server, {"excludedMachineNames": ["web-02"], "skipStepNames": ["Two"]}
    )
    assert status == 201, answer
    done = await wait_task(live_server, answer["taskId"])
    assert done["state"] == "success", done
    assert sorted(t["machineName"] for t in done["targets"]) == ["web-01", "web-03"]
    lines = await texts(live_server, answer["taskId"])
    assert lines.count("one") == 2 and "two" not in lines
    status, answer = await _create(
        live_server, {"specificMachineNames": ["web-02"], "machineNames": ["web-03"]}
    )
    assert status == 201, answer
    done = await wait_task(live_server, answer["taskId"])
    assert sorted(t["machineName"] for t in done["targets"]) == ["web-02", "web-03"]  # machineNames adds up


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"specificMachineNames": ["nope"]},
            404,
            "specificMachineNames[0]: machine 'nope' does not exist in space 'Default'",
        ),
        (
            {"machineNames": ["nope"]},
            404,
            "specificMachineNames[0]: machine 'nope' does not exist in space 'Default'",
        ),
        (
            {"excludedMachineNames": ["web-01", "nope"]},
            404,
            "excludedMachineNames[1]: machine 'nope' does not exist",
        ),
        (
            {"specificMachineNames": ["web-01"], "excludedMachineNames": ["web-01"]},
            400,
            "excludedMachineNames: web-01 also named in specificMachineNames",
        ),
        ({"skipStepNames": ["Three"]}, 404, "skipStepNames[0]: project 'Two' has no step 'Three'"),
        ({"skipStepNames": ["One", "Two"]}, 400, "skipStepNames: every step is skipped"),
        (
            {"excludedMachineNames": ["web-01"]},
            400,
            "no machine in Dev has any of the roles web (after excludedMachineNames)",
        ),
        ({"noRunAfter": _at(-60)}, 400, "noRunAfter: is in the past"),
        ({"runAt": _at(120), "noRunAfter": _at(60)}, 400, "noRunAfter: must be after runAt"),
        ({"runAt": "2030-01-01T10:00:00"}, 400, "runAt: expected `datetime` with a timezone component"),
        ({"runAt": "tomorrow"}, 400, "runAt: invalid RFC3339 encoded datetime"),
        (
            {"forcePackageRedeployment": "yes"},
            400,
            "forcePackageRedeployment: expected true or false, got a string",
        ),
    ],
)
async def test_bad_options_are_4xx_naming_them_and_create_nothing(
    live_server: LiveServer, tentacles: Tentacles, body: dict[str, Any], status: int, message: str
) -> None:
    """Unknown machines and steps, overlaps and impossible schedules are refused by name."""
    await tentacles.register("web-01", "polling")
    await apply(live_server, TWO_STEPS)
    await release(live_server, "Two", "1.0.0")
    got, answer = await _create(live_server, body)
    assert got == status, answer
    assert answer["error"]["message"].startswith(message), answer
    assert await _tasks(live_server) == 0


async def test_a_scheduled_deployment_waits_queued_and_survives_a_restart(
    server_home: InstancePaths, tmp_path: Path
) -> None:
    """runAt keeps the task queued (shown with its time) across a server restart, then it runs."""
    live = await start_server(server_home)
    ports = (live.server.bound.api, live.server.bound.polling)
    fleet = Tentacles(live, tmp_path / "t")
    try:
        await _online(live, fleet, ["web-01"])
        await apply(live, {"name": "Two", "steps": [step("When", "date +%s.%N", ("web",))]})
        await release(live, "Two", "1.0.0")
        run_at = time.time() + 3
        status, answer = await _create(live, {"runAt": datetime.fromtimestamp(run_at, UTC).isoformat()})
        assert status == 201, answer
        task_id = answer["taskId"]
        queued = await task(live, task_id)
        assert queued["state"] == "queued" and queued["runAt"].endswith("Z")
        await stop_server(live)
        live = fleet.server = await start_server(server_home, *ports)
        assert (await task(live, task_id))["state"] == "queued"
        done = await wait_task(live, task_id, timeout=30)
        assert done["state"] == "success", done
        started = next(float(line) for line in await texts(live, task_id, "web-01") if line[:1].isdigit())
        assert started >= run_at
    finally:
        await fleet.stop_all()
        await stop_server(live)


async def test_a_task_still_queued_after_no_run_after_is_cancelled(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """Behind a busy machine past noRunAfter, the task is cancelled with that reason."""
    await _online(live_server, tentacles, ["web-01"])
    await apply(live_server, {"name": "Two", "steps": [step("Long", "echo long; sleep 30", ("web",))]})
    await release(live_server, "Two", "1.0.0")
    busy = (await _create(live_server, {}))[1]["taskId"]
    await wait_task(live_server, busy, states=("running",))
    status, answer = await _create(live_server, {"noRunAfter": _at(1.5)})
    assert status == 201, answer
    done = await wait_task(live_server, answer["taskId"], timeout=15)
    assert done["state"] == "cancelled"
    assert done["error"].startswith("not started before noRunAfter ")
    assert (await live_server.api("POST", f"/api/Default/tasks/{busy}/cancel/v1"))[0] == 202
    assert (await wait_task(live_server, busy))["state"] == "cancelled"


def _zip(text: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", text)
    return out.getvalue()


async def test_force_package_redeployment_acquires_a_cached_package_again(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path, mode: str
) -> None:
    """A second deployment uses the cached file; with forcePackageRedeployment it is fetched anew."""
    package = tmp_path / "Shop.Web.1.0.0.zip"
    package.write_bytes(_zip(b"web " * 10_000))
    await asyncio.to_thread(
        feed.push, live_server.server.db, feed.store_dir(live_server.paths.state), package
    )
    await _online(live_server, tentacles, ["web-01"], mode)
    doc = {
        "name": "Two",
        "steps": [
            {**step("Web", 'cat "$PACKAGE_DIR/readme.txt" | wc -c', ("web",)), "package": {"id": "Shop.Web"}}
        ],
    }
    await apply(live_server, doc)
    await release(live_server, "Two", "1.0.0")

    async def deploy_and_inode(body: dict[str, Any]) -> int:
        status, answer = await _create(live_server, body)
        assert status == 201, answer
        assert (await wait_task(live_server, answer["taskId"], timeout=30))["state"] == "success"
        (cached,) = [p for p in (tentacles.root / "web-01").rglob("sha512/*/*") if p.is_file()]
        return cached.stat().st_ino

    first = await deploy_and_inode({})
    sent = live_server.server.pusher.sent
    assert await deploy_and_inode({}) == first  # cached: not acquired again
    assert await deploy_and_inode({"forcePackageRedeployment": True}) != first  # a new file, fetched again
    assert live_server.server.pusher.sent == sent  # fetched by the tentacle, not pushed twice
