"""The Octopus shapes at the API's edge: refusals, spaces, keys, and our own shape beside them.

Octopus Deploy's official client (3.11.0, unmodified) against a real server: what this
server does not support is a 400 whose ErrorMessage says so and creates nothing; spaces
are found by name and used by id; Octopus's key headers work; errors show through the
client. Our own camelCase bodies on the same paths are answered as before, in our shape.
The last test starts the server as the README says (`server-shim init`, `server-shim run`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rigs.instances import Server as ServerProcess
from server_shim import server_config
from tentacle.net.tls import client_context
from tests import octopus_tools
from tests.conftest import LiveServer, Tentacles
from tests.deploying import step
from tests.octopus_tools import ClientError, OctopusClient

SHOP = {
    "name": "Shop",
    "steps": [step("Say", "echo hello")],
    "runbooks": {"Restart": {"steps": [step("Restart", "echo restarted")]}},
}
DEPLOY = {"ProjectName": "Shop", "ReleaseVersion": "1.0.0", "EnvironmentNames": ["Dev"]}


async def _ok(live: LiveServer, method: str, path: str, body: Any = None) -> Any:
    status, answer = await live.api(method, path, body)
    assert status in (200, 201), answer
    return answer


async def _send(
    live: LiveServer, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request with exactly these headers (no key unless given); (status, decoded answer)."""
    ca = live.paths.config / server_config.CA_CERT
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, live.url + path, json=body, headers=headers or {}, ssl=client_context(ca)
        ) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text) if resp.content_type == "application/json" else text


def _key(live: LiveServer) -> dict[str, str]:
    return {"X-Octopus-ApiKey": live.admin_key}


async def _counts(live: LiveServer) -> tuple[int, int]:
    def count(conn: Any) -> tuple[int, int]:
        releases = conn.execute("SELECT COUNT(*) FROM releases").fetchone()[0]
        return releases, conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]

    return await live.server.db.run(count)


@pytest.fixture
async def shop(live_server: LiveServer, tentacles: Tentacles) -> LiveServer:
    """Project Shop with release 1.0.0, and web-01 registered in Dev (it need not run)."""
    await tentacles.register("web-01", "polling")
    await _ok(live_server, "PUT", "/api/Default/projects/Shop/v1", SHOP)
    await _ok(
        live_server,
        "POST",
        "/api/Default/releases/create/v1",
        {"projectName": "Shop", "releaseVersion": "1.0.0"},
    )
    return live_server


@pytest.fixture
async def octopus(live_server: LiveServer) -> Any:
    """The official client, connected with the admin key."""
    ca = live_server.paths.config / server_config.CA_CERT
    client = await OctopusClient.connect(live_server.url, ca, api_key=live_server.admin_key)
    yield client
    await client.close()


async def test_unsupported_fields_are_refused_saying_so_and_create_nothing(
    shop: LiveServer, octopus: OctopusClient
) -> None:
    """Guided failure, prompted variables, Git refs, freezes, release notes: 400s the client shows."""
    before = await _counts(shop)
    guided = await octopus.refused("deploy", **DEPLOY, UseGuidedFailure=True)
    assert guided["StatusCode"] == 400
    assert guided["ErrorMessage"].startswith("UseGuidedFailure: guided failure is not supported here")
    two = await octopus.refused(
        "deploy", **DEPLOY, Variables={"Password": "x"}, DeploymentFreezeNames=["Xmas"]
    )
    lines = two["ErrorMessage"].split("\n")  # the client shows ErrorMessage, then each of Errors
    assert lines[0] == "2 fields are not supported here (Variables, DeploymentFreezeNames)"
    assert lines[1].startswith("Variables: prompted variables are not supported")
    assert lines[2].startswith("DeploymentFreezeNames: deployment freezes are not supported")
    tenanted = {
        "ProjectName": "Shop",
        "ReleaseVersion": "1.0.0",
        "EnvironmentName": "Dev",
        "Tenants": ["Acme"],
    }
    snapshot = await octopus.refused("deployTenanted", **tenanted, UpdateVariableSnapshot=True)
    assert snapshot["ErrorMessage"].startswith("UpdateVariableSnapshot: a release keeps the variables")
    git = await octopus.refused("createRelease", ProjectName="Shop", ReleaseVersion="2.0.0", GitRef="main")
    assert git["ErrorMessage"].startswith("GitRef: Git refs are not supported here")
    notes = await octopus.refused(
        "createRelease", ProjectName="Shop", ReleaseVersion="2.0.0", ReleaseNotes="hi"
    )
    assert notes["ErrorMessage"] == "ReleaseNotes: release notes are not kept here"
    run = {"ProjectName": "Shop", "RunbookName": "Restart", "EnvironmentNames": ["Dev"]}
    assert (await octopus.refused("runRunbook", **run, Snapshot="RunbookSnapshots-1"))["StatusCode"] == 400
    git_run = await octopus.refused("runGitRunbook", command=run, gitRef="refs/heads/main")
    assert git_run["StatusCode"] == 400 and "Git runbooks are not supported here" in git_run["ErrorMessage"]
    colour = await octopus.refused("deploy", **DEPLOY, Colour="red")
    assert colour["ErrorMessage"] == "Colour: unknown field"
    assert await _counts(shop) == before


async def test_our_errors_show_through_the_client(shop: LiveServer, octopus: OctopusClient) -> None:
    """A missing project, release or environment: the client shows our message, with its status."""
    missing = await octopus.refused("deploy", **{**DEPLOY, "ReleaseVersion": "9.9.9"})
    assert (
        missing["StatusCode"] == 404
        and "release '9.9.9' of project 'Shop' does not exist" in missing["ErrorMessage"]
    )
    nowhere = await octopus.refused("deploy", **{**DEPLOY, "EnvironmentNames": ["Prod"]})
    assert nowhere["StatusCode"] == 404 and "environment 'Prod'" in nowhere["ErrorMessage"]
    package = await octopus.refused(
        "createRelease", ProjectName="Shop", ReleaseVersion="2.0.0", Packages=["Nope:1.0"]
    )
    assert package["StatusCode"] == 400 and package["ErrorMessage"].startswith(
        "Packages[0]: no package or step"
    )
    unknown = await octopus.refused("wait", ids=["T-000000000000"])
    assert unknown["message"] == "Unknown task Id(s) T-000000000000"  # the waiter's own words
    assert (await octopus.refused("task", id="T-000000000000"))["StatusCode"] == 404


async def test_our_own_bodies_keep_our_shape_on_the_shared_paths(shop: LiveServer) -> None:
    """camelCase bodies get our answers, with the space by name or id; Octopus's get Octopus's."""
    ours = {"projectName": "Shop", "releaseVersion": "1.0.1"}
    status, answer = await _send(shop, "POST", "/api/Spaces-1/releases/create/v1", ours, _key(shop))
    assert status == 201 and answer == {
        "projectName": "Shop",
        "releaseVersion": "1.0.1",
        "packageVersions": {},
        "channelName": "Default",
    }
    deploy = {"projectName": "Shop", "releaseVersion": "1.0.1", "environmentNames": ["Dev"]}
    status, answer = await _send(
        shop, "POST", "/api/Default/deployments/create/untenanted/v1", deploy, _key(shop)
    )
    assert status == 201 and set(answer) == {"taskId"}
    theirs = {"spaceName": "Default", **DEPLOY}
    status, answer = await _send(
        shop, "POST", "/api/Spaces-1/deployments/create/untenanted/v1", theirs, _key(shop)
    )
    assert status == 201 and set(answer) == {"DeploymentServerTasks"}
    task_id = answer["DeploymentServerTasks"][0]["ServerTaskId"]
    status, ours_view = await _send(shop, "GET", f"/api/Default/tasks/{task_id}/v1", None, _key(shop))
    assert status == 200 and ours_view["taskId"] == task_id  # one task, seen by both APIs
    status, error = await _send(
        shop, "POST", "/api/Default/releases/create/v1", {"projectName": "Nope"}, _key(shop)
    )
    assert status == 404 and error["ErrorMessage"] == error["error"]["message"] and error["Errors"] == []
    elsewhere = {"spaceName": "Other", "ProjectName": "Shop"}
    status, error = await _send(shop, "POST", "/api/Default/releases/create/v1", elsewhere, _key(shop))
    assert status == 400 and error["ErrorMessage"].startswith(
        "spaceName: 'Other' is not the space of the URL"
    )


async def test_octopus_key_headers_and_the_anonymous_root(live_server: LiveServer) -> None:
    """X-Octopus-ApiKey and Authorization: Bearer are API keys; GET /api needs none, the rest do."""
    live = live_server
    status, root = await _send(live, "GET", "/api")
    assert status == 200 and root["Version"] == "2022.3.5512" and root["Application"] == "Octopus Deploy"
    status, error = await _send(live, "GET", "/api/spaces")
    assert status == 401 and error["ErrorMessage"]
    for headers in (_key(live), {"Authorization": f"Bearer {live.admin_key}"}):
        status, spaces = await _send(live, "GET", "/api/spaces", None, headers)
        assert status == 200 and spaces["Items"][0]["Id"] == "Spaces-1", headers
    ca = live.paths.config / server_config.CA_CERT
    bearer = await OctopusClient.connect(live.url, ca, access_token=live.admin_key)
    wrong = await OctopusClient.connect(live.url, ca, api_key="API-WRONG")
    try:
        assert await bearer.call("resolveSpace", name="Default") == "Spaces-1"
        refused = await wrong.refused("resolveSpace", name="Default")
        assert refused["StatusCode"] == 401 and refused["ErrorMessage"] == "invalid API key"
    finally:
        await bearer.close()
        await wrong.close()


async def test_spaces_are_found_by_name_and_used_by_id(live_server: LiveServer) -> None:
    """A second space: the client resolves it by name, then works in it by id; lists page and filter."""
    live = live_server
    await _ok(live, "POST", "/api/spaces/v1", {"name": "Ops"})
    await _ok(live, "PUT", "/api/Ops/projects/Tools/v1", {"name": "Tools", "steps": [step("Say", "echo hi")]})
    ca = live.paths.config / server_config.CA_CERT
    client = await OctopusClient.connect(live.url, ca, api_key=live.admin_key, space="Ops")
    try:
        assert await client.call("resolveSpace", name="Ops") == "Spaces-2"
        made = await client.call("createRelease", ProjectName="Tools", ReleaseVersion="0.1.0")
        assert made["ReleaseVersion"] == "0.1.0"
        missing = await client.refused("resolveSpace", name="Nope")
        assert missing["message"] == "No spaces exist with name 'Nope'"
    finally:
        await client.close()
    status, found = await _send(live, "GET", "/api/spaces?partialName=op&skip=0&take=10", None, _key(live))
    assert status == 200 and [s["Name"] for s in found["Items"]] == ["Ops"] and found["TotalResults"] == 1
    status, page = await _send(live, "GET", "/api/spaces?skip=1&take=1", None, _key(live))
    assert [s["Id"] for s in page["Items"]] == ["Spaces-2"] and page["TotalResults"] == 2
    assert page["NumberOfPages"] == 2 and page["ItemsPerPage"] == 1
    status, one = await _send(live, "GET", "/api/spaces/Spaces-2", None, _key(live))
    assert status == 200 and one["Name"] == "Ops" and not one["IsDefault"]
    status, error = await _send(live, "GET", "/api/spaces?colour=red", None, _key(live))
    assert status == 400 and error["ErrorMessage"].startswith("colour: this query parameter is not supported")
    status, error = await _send(
        live, "POST", "/api/spaces/v1", {"name": "Spaces-9"}, {"X-Api-Key": live.admin_key}
    )
    assert status == 400 and "shape of a space id" in error["ErrorMessage"]


async def test_the_client_against_a_server_started_the_readme_way(tmp_path: Path) -> None:
    """`server-shim init`, `server-shim run`, `project apply`: the client connects and creates a release."""
    server = ServerProcess(tmp_path / "server")
    await asyncio.to_thread(server.init)
    await asyncio.to_thread(server.start)
    try:
        document = tmp_path / "shop.json"
        document.write_text(json.dumps(SHOP))
        await asyncio.to_thread(server.cli, "project", "apply", str(document), "--server", server.url)
        ca = tmp_path / "ca.pem"
        ca.write_text(await asyncio.to_thread(server.cli, "show-ca"))
        client = await OctopusClient.connect(server.url, ca, api_key=server.admin_key())
        try:
            assert client.info["version"] == "2022.3.5512"
            made = await client.call("createRelease", ProjectName="Shop", ReleaseVersion="1.2.3")
            assert made["ReleaseVersion"] == "1.2.3"
            nobody = await client.refused(
                "deploy", ProjectName="Shop", ReleaseVersion="1.2.3", EnvironmentNames=["Dev"]
            )
            assert (
                nobody["StatusCode"] == 404 and "environment 'Dev' has no machines" in nobody["ErrorMessage"]
            )
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(server.stop)


def test_client_error_names_the_operation() -> None:
    """A failed operation's exception says which one and what the client reported."""
    error = ClientError("deploy", {"ErrorMessage": "no"})
    assert "deploy" in str(error) and error.error == {"ErrorMessage": "no"}


async def test_tasks_are_read_by_id_with_or_without_the_space_and_listed(shop: LiveServer) -> None:
    """One task by id (with the space, or without as Octopus allows), by a list of ids, and paged."""
    ids = []
    for _ in range(3):
        status, answer = await _send(
            shop, "POST", "/api/Default/deployments/create/untenanted/v1", DEPLOY, _key(shop)
        )
        assert status == 201, answer
        ids.append(answer["DeploymentServerTasks"][0]["ServerTaskId"])
    status, one = await _send(shop, "GET", f"/api/tasks/{ids[0]}", None, _key(shop))
    assert status == 200 and one["Id"] == ids[0] and one["SpaceId"] == "Spaces-1" and one["Name"] == "Deploy"
    status, listed = await _send(
        shop, "GET", f"/api/Spaces-1/tasks?ids={ids[0]},T-000000000000,{ids[2]}", None, _key(shop)
    )
    assert status == 200 and sorted(t["Id"] for t in listed["Items"]) == sorted([ids[0], ids[2]])
    assert listed["TotalResults"] == 2 and listed["ItemType"] == "Task"
    status, paged = await _send(shop, "GET", "/api/Default/tasks?skip=1&take=1", None, _key(shop))
    assert status == 200 and paged["TotalResults"] == 3 and [t["Id"] for t in paged["Items"]] == [ids[1]]
    status, details = await _send(shop, "GET", f"/api/tasks/{ids[1]}/details", None, _key(shop))
    assert status == 200 and details["Task"]["Id"] == ids[1]
    assert [child["Name"] for child in details["ActivityLogs"][0]["Children"]] == ["web-01"]
    status, raw = await _send(shop, "GET", f"/api/Default/tasks/{ids[1]}/raw", None, _key(shop))
    assert status == 200 and raw.startswith(f"Task ID:        {ids[1]}\n")
    status, error = await _send(shop, "GET", "/api/Default/tasks?states=Queued", None, _key(shop))
    assert status == 400 and error["ErrorMessage"].startswith("states: this query parameter is not supported")
    status, error = await _send(shop, "GET", f"/api/Ops/tasks/{ids[0]}", None, _key(shop))
    assert status == 404 and error["ErrorMessage"] == "space 'Ops' does not exist"


async def test_the_lookups_octopus_actions_make_after_creating(shop: LiveServer) -> None:
    """Deployments and runbook runs by id; environments and tenants by id or partial name."""
    await _ok(shop, "PUT", "/api/Default/tagsets/Region/v1", {"tags": ["EU"]})
    await _ok(
        shop, "PUT", "/api/Default/tenants/Acme/v1", {"tags": ["Region/EU"], "projects": {"Shop": ["Test"]}}
    )
    status, made = await _send(
        shop, "POST", "/api/Default/deployments/create/untenanted/v1", DEPLOY, _key(shop)
    )
    (deployment,) = made["DeploymentServerTasks"]
    run = {"ProjectName": "Shop", "RunbookName": "Restart", "EnvironmentNames": ["Dev"]}
    status, ran = await _send(shop, "POST", "/api/Default/runbook-runs/create/v1", run, _key(shop))
    (runbook_run,) = ran["RunbookRunServerTasks"]
    both = f"{deployment['DeploymentId']},{runbook_run['RunbookRunId']}"
    status, found = await _send(shop, "GET", f"/api/Spaces-1/deployments?ids={both}&take=2", None, _key(shop))
    assert status == 200 and [d["TaskId"] for d in found["Items"]] == [deployment["ServerTaskId"]]
    (item,) = found["Items"]
    assert item["ReleaseId"].startswith("Releases-") and item["TenantId"] is None
    status, runs = await _send(shop, "GET", f"/api/Spaces-1/runbookRuns?ids={both}", None, _key(shop))
    assert [r["TaskId"] for r in runs["Items"]] == [runbook_run["ServerTaskId"]]
    status, environments = await _send(shop, "GET", "/api/Default/environments", None, _key(shop))
    by_name = {e["Name"]: e["Id"] for e in environments["Items"]}
    assert sorted(by_name) == ["Dev", "Test"] and by_name["Dev"] == item["EnvironmentId"]
    status, v2 = await _send(
        shop, "GET", "/api/Default/environments/v2?partialName=te&type=Static", None, _key(shop)
    )
    assert [e["Name"] for e in v2["Items"]] == ["Test"]
    status, tenants = await _send(shop, "GET", "/api/Default/tenants?partialName=AC", None, _key(shop))
    (acme,) = tenants["Items"]
    assert acme["Name"] == "Acme" and acme["TenantTags"] == ["Region/EU"]
    assert list(acme["ProjectEnvironments"].values()) == [[by_name["Test"]]]
    status, by_id = await _send(shop, "GET", f"/api/Default/tenants?ids={acme['Id']}", None, _key(shop))
    assert [t["Name"] for t in by_id["Items"]] == ["Acme"]
    for path in ("/api/Default/deployments?projects=Projects-1", "/api/Default/environments?type=Static"):
        status, error = await _send(shop, "GET", path, None, _key(shop))
        assert status == 400 and "this query parameter is not supported" in error["ErrorMessage"], path


def test_a_missing_client_fails_the_test_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the client where the tests look, a test that needs it fails (never skips), naming make."""
    monkeypatch.setattr(octopus_tools, "PACKAGE", tmp_path / "missing" / "package.json")
    with pytest.raises(pytest.fail.Exception, match=r"not installed .*make octopus-client"):
        octopus_tools.node()
    wrong = tmp_path / "package.json"
    wrong.write_text(json.dumps({"version": "3.0.0"}))
    monkeypatch.setattr(octopus_tools, "PACKAGE", wrong)
    with pytest.raises(pytest.fail.Exception, match=r"3\.0\.0 is installed, not 3\.11\.0"):
        octopus_tools.node()
