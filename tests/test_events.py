"""Events: every change design.md names, recorded with the change, numbered, paged by space.

A real server and real tentacles: each event comes from the operation an operator or a
tentacle makes (register, connect, deploy, cancel, remove, push a package).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from server_shim.cli import main as server_cli
from server_shim.store import events
from server_shim.store import project_rows as projects
from tentacle.protocol.process import parse_process
from tests.conftest import LiveServer, Tentacles, eventually
from tests.deploying import apply, deploy, release, step, wait_task
from tests.feed_helpers import make_zip


async def page(live: LiveServer, query: str = "", space: str = "Default") -> dict[str, Any]:
    """One page of the events list."""
    status, answer = await live.api("GET", f"/api/{space}/events/v1{query}")
    assert status == 200, answer
    return dict(answer)


async def kinds(live: LiveServer, query: str = "") -> list[str]:
    """The kinds of the events in order."""
    return [e["kind"] for e in (await page(live, query))["items"]]


async def wait_kind(live: LiveServer, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """Wait until there are ``count`` events of ``kind``; returns them."""
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        found[:] = (await page(live, f"?kind={kind}"))["items"]
        return len(found) >= count

    await eventually(enough, 20, what=lambda: found)
    return found


async def test_a_deployment_and_a_machine_life(live_server: LiveServer, tentacles: Tentacles) -> None:
    """Registering, connecting, deploying, failing, cancelling and removing each record their event,
    with the project, release, environments, machine, task and state they concern."""
    live = live_server
    await tentacles.register("web-1", "polling")
    await tentacles.start("web-1")
    [online] = await wait_kind(live, "machineOnline")
    assert (online["machineName"], online["environmentNames"], online["roles"]) == ("web-1", ["Dev"], ["web"])
    await apply(live, {"name": "Shop", "steps": [step("Hello", "echo hi")]})
    version = await release(live, "Shop")
    task_id = await deploy(live, "Shop", version)
    assert (await wait_task(live, task_id))["state"] == "success"
    await apply(live, {"name": "Shop", "steps": [step("Hello", "exit 3")]})
    failing = await deploy(live, "Shop", await release(live, "Shop"))
    assert (await wait_task(live, failing))["state"] == "failed"
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 3600, UTC).isoformat()
    body = {"projectName": "Shop", "releaseVersion": version, "environmentNames": ["Dev"], "runAt": later}
    status, queued = await live.api("POST", "/api/Default/deployments/create/untenanted/v1", body)
    assert status == 201
    status, _ = await live.api("POST", f"/api/Default/tasks/{queued['taskId']}/cancel/v1")
    await tentacles.stop("web-1")
    await wait_kind(live, "machineOffline")
    status, _ = await live.api("DELETE", "/api/Default/machines/web-1/v1")
    assert status == 200
    seen = (await page(live))["items"]
    assert [e["kind"] for e in seen] == [
        "machineRegistered",
        "machineOnline",
        "projectUpdated",
        "releaseCreated",
        "deploymentQueued",
        "deploymentStarted",
        "deploymentSucceeded",
        "projectUpdated",
        "releaseCreated",
        "deploymentQueued",
        "deploymentStarted",
        "deploymentFailed",
        "deploymentQueued",
        "deploymentCancelled",
        "machineOffline",
        "machineRemoved",
    ]
    assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
    succeeded = seen[6]
    assert (succeeded["projectName"], succeeded["releaseVersion"], succeeded["taskId"]) == (
        "Shop",
        version,
        task_id,
    )
    assert (succeeded["environmentNames"], succeeded["taskState"], succeeded["space"]) == (
        ["Dev"],
        "success",
        "Default",
    )
    assert seen[11]["details"] == {"error": "web-1 failed in step:0 (Hello): exit code 3"}
    assert seen[13]["taskId"] == queued["taskId"] and seen[13]["taskState"] == "cancelled"


async def test_paging_by_since_kind_and_take(live_server: LiveServer) -> None:
    """``since`` pages after a number, ``kind`` filters (repeated or comma-separated), ``take`` bounds."""
    await apply(live_server, {"name": "Shop", "steps": []})
    for _ in range(3):
        await release(live_server, "Shop")
    first = await page(live_server, "?take=2")
    assert [e["kind"] for e in first["items"]] == ["projectUpdated", "releaseCreated"]
    rest = await page(live_server, f"?since={first['lastSeq']}")
    assert [e["kind"] for e in rest["items"]] == ["releaseCreated", "releaseCreated"]
    empty = await page(live_server, f"?since={rest['lastSeq']}")
    assert empty == {"items": [], "lastSeq": rest["lastSeq"]}
    assert await kinds(live_server, "?kind=projectUpdated") == ["projectUpdated"]
    assert len(await kinds(live_server, "?kind=projectUpdated,releaseCreated")) == 4
    assert len(await kinds(live_server, "?kind=projectUpdated&kind=releaseCreated")) == 4


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("?kind=deploymentExploded", 400, "kind: unknown event kind 'deploymentExploded'"),
        ("?since=-1", 400, "since: must be a whole number"),
        ("?take=0", 400, "take: must be a whole number from 1 to 1000"),
    ],
)
async def test_bad_queries_are_refused(live_server: LiveServer, query: str, status: int, text: str) -> None:
    """A bad query gets a 400 naming the parameter."""
    got, answer = await live_server.api("GET", f"/api/Default/events/v1{query}")
    assert got == status and text in answer["error"]["message"], answer


async def test_events_belong_to_their_space(live_server: LiveServer, tmp_path: Path) -> None:
    """A space sees its own events and the server's (a package pushed), never another space's."""
    status, _ = await live_server.api("POST", "/api/spaces/v1", {"name": "Other"})
    assert status == 201
    status, _ = await live_server.api("PUT", "/api/Other/projects/Lab/v1", {"name": "Lab", "steps": []})
    await apply(live_server, {"name": "Shop", "steps": []})
    zipped = make_zip(tmp_path / "Web.1.2.3.zip")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the local command: another connection, as another process
        assert (
            await asyncio.to_thread(
                server_cli.main, ["--home", str(live_server.paths.config), "package", "push", str(zipped)]
            )
            == 0
        )
    default, other = (await page(live_server))["items"], (await page(live_server, space="Other"))["items"]
    assert [(e["kind"], e["projectName"]) for e in default] == [
        ("projectUpdated", "Shop"),
        ("packagePushed", None),
    ]
    assert [(e["kind"], e["projectName"]) for e in other] == [
        ("projectUpdated", "Lab"),
        ("packagePushed", None),
    ]
    assert (
        default[1]["details"] == {"packageId": "Web", "packageVersion": "1.2.3"}
        and default[1]["space"] is None
    )
    status, answer = await live_server.api("GET", "/api/Nowhere/events/v1")
    assert status == 404, answer


async def test_no_event_for_a_change_that_rolled_back(live_server: LiveServer) -> None:
    """Calls that share one commit each keep or lose their event with their change: the one that
    raised after changing leaves neither, the others keep both."""
    db = live_server.server.db
    process = parse_process({"name": "Kept", "steps": []}, "Kept")

    def put_then_fail(conn: sqlite3.Connection) -> None:
        projects.put_project(conn, "Default", "Lost", parse_process({"name": "Lost", "steps": []}, "Lost"))
        raise RuntimeError("changed my mind")

    results = await asyncio.gather(
        db.run(projects.put_project, "Default", "Kept", process),
        db.run(put_then_fail),
        db.run(
            projects.put_project, "Default", "Kept2", parse_process({"name": "Kept2", "steps": []}, "Kept2")
        ),
        return_exceptions=True,
    )
    assert isinstance(results[1], RuntimeError) and results[0] is True and results[2] is True
    seen = (await page(live_server))["items"]
    assert [e["projectName"] for e in seen] == ["Kept", "Kept2"]
    assert await db.run(events.last_seq) == seen[-1]["seq"]


async def test_tenanted_events_name_their_tenant(live_server: LiveServer, tentacles: Tentacles) -> None:
    """A machine serving one tenant, and a tenanted deployment's events, carry the tenant's name;
    a reaction filtered on that tenant gets them."""
    live = live_server
    await apply(live, {"name": "Shop", "steps": [step("Hello", "echo hi")]})
    status, answer = await live.api("PUT", "/api/Default/tenants/Acme/v1", {"projects": {"Shop": ["Dev"]}})
    assert status == 201, answer
    script = {"syntax": "bash", "body": "true"}
    doc = {"trigger": {"events": ["deploymentSucceeded"], "tenants": ["Acme"]}, "action": {"script": script}}
    status, answer = await live.api("PUT", "/api/Default/reactions/acme/v1", doc)
    assert status == 201, answer
    await tentacles.register("web-acme", "polling", tenants=("Acme",), tenanted_deployment="tenanted")
    await tentacles.start("web-acme")
    version = await release(live, "Shop")
    body = {
        "projectName": "Shop",
        "releaseVersion": version,
        "environmentName": "Dev",
        "tenantNames": ["Acme"],
    }
    status, created = await live.api("POST", "/api/Default/deployments/create/tenanted/v1", body)
    assert status == 201, created
    assert (await wait_task(live, created["deployments"][0]["taskId"]))["state"] == "success"
    [registered] = await wait_kind(live, "machineRegistered")
    [succeeded] = await wait_kind(live, "deploymentSucceeded")
    assert registered["tenantName"] == "Acme" and registered["details"]["tenants"] == ["Acme"]
    assert succeeded["tenantName"] == "Acme"
    status, got = await live.api("GET", "/api/Default/reactions/acme/deliveries/v1")
    assert [d["eventKind"] for d in got["items"]] == ["deploymentSucceeded"]
