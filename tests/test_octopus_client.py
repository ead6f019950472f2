"""Octopus Deploy's official TypeScript API client (3.11.0, unmodified) drives a real server.

A real server and two real tentacles, in both modes: web-01 takes part in untenanted and
tenanted deployments and serves tenant Acme; web-02 is untenanted. The client connects
(``GET /api``, the space resolved by name), creates releases (a version, package versions,
a channel, IgnoreIfAlreadyExists), deploys untenanted and tenanted, runs a runbook, waits
for each task with its own waiter, sees a failed deployment as Failed with its reason,
and cancels one. Everything is set up through our own API first, as an operator would.
"""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
from asyncio.subprocess import PIPE, STDOUT
from pathlib import Path
from typing import Any

import pytest

from server_shim import server_config
from server_shim.store import feed_store as feed
from tests.conftest import LiveServer, Tentacles, eventually
from tests.deploying import log_lines, step
from tests.octopus_tools import MODULES, ROOT, OctopusClient, node

pytestmark = pytest.mark.slow

SHOP = {
    "name": "Shop",
    "steps": [
        {
            **step("Web", 'cat "$PACKAGE_DIR/readme.txt"; echo " tenant=${TENTACLE_TENANT_NAME:-none}"'),
            "package": {"id": "Shop.Web"},
        }
    ],
    "runbooks": {"Restart": {"steps": [step("Restart", 'echo "restarted $TENTACLE_MACHINE_NAME"')]}},
    "channels": [{"name": "Hotfix", "rules": [{"packages": ["Shop.Web"], "versionRange": "[1.1,1.2)"}]}],
}
BROKEN = {"name": "Broken", "steps": [step("Migrate", 'echo "disk on fire" >&2; exit 3')]}
SLOW = {"name": "Slow", "steps": [step("Wait", "echo waiting; sleep 120")]}


def _zip(text: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", text)
    return out.getvalue()


async def _ok(live: LiveServer, method: str, path: str, body: Any) -> Any:
    status, answer = await live.api(method, path, body)
    assert status in (200, 201), answer
    return answer


async def _setup(live: LiveServer, tmp: Path) -> None:
    """Packages, projects, a tag set and tenant Acme, through our own API."""
    for version in ("1.0.0", "1.1.0"):
        package = tmp / f"Shop.Web.{version}.zip"
        package.write_bytes(_zip(f"web {version}"))
        await asyncio.to_thread(feed.push, live.server.db, feed.store_dir(live.paths.state), package)
    for doc in (SHOP, BROKEN, SLOW):
        await _ok(live, "PUT", f"/api/Default/projects/{doc['name']}/v1", doc)
    await _ok(live, "PUT", "/api/Default/tagsets/Region/v1", {"tags": ["EU", "US"]})
    acme = {"tags": ["Region/EU"], "projects": {"Shop": ["Dev"]}}
    await _ok(live, "PUT", "/api/Default/tenants/Acme/v1", acme)


@pytest.fixture
async def fleet(live_server: LiveServer, tentacles: Tentacles, mode: str, tmp_path: Path) -> LiveServer:
    """The server, set up, with web-01 (untenanted and Acme's) and web-02 (untenanted) online."""
    await _setup(live_server, tmp_path)
    await tentacles.register("web-01", mode, tenants=("Acme",), tenanted_deployment="both")
    await tentacles.register("web-02", mode)
    for name in ("web-01", "web-02"):
        await tentacles.start(name)
    await eventually(lambda: live_server.online("web-01", "web-02"), 10)
    return live_server


@pytest.fixture
async def octopus(fleet: LiveServer) -> Any:
    """The official client, connected to the server with the admin key."""
    client = await OctopusClient.connect(
        fleet.url, fleet.paths.config / server_config.CA_CERT, api_key=fleet.admin_key
    )
    yield client
    await client.close()


async def _printed(live: LiveServer, task_id: str) -> dict[str, list[str]]:
    """What the scripts of a task printed, by machine (read through our own API)."""
    found: dict[str, list[str]] = {}
    for line in await log_lines(live, task_id):
        if line["stream"] == "stdout":
            found.setdefault(line["machineName"], []).append(line["text"])
    return found


async def _wait(octopus: OctopusClient, *ids: str) -> list[dict[str, Any]]:
    """The client's own waiter, until every task ended; the tasks as it last saw them."""
    waited = await octopus.call("wait", ids=list(ids), timeoutMs=60_000)
    tasks = {task["Id"]: task for task in waited["tasks"]}
    assert sorted(tasks) == sorted(ids), waited
    return [tasks[task_id] for task_id in ids]


async def _where(octopus: OctopusClient, kind: str, execution_id: str) -> tuple[str, str, str | None]:
    """(task, environment, tenant) of a deployment or runbook run, looked up as Octopus's actions do."""
    (found,) = (await octopus.call(kind, ids=[execution_id], take=1))["Items"]
    environments: set[str] = set()
    for lookup in ("environments", "environmentsV2"):
        listed = await octopus.call(lookup, ids=[found["EnvironmentId"]], skip=0, take=1)
        environments.update(env["Name"] for env in listed["Items"])
    (environment,) = environments
    tenant = None
    if found["TenantId"]:
        (tenant,) = [
            t["Name"] for t in (await octopus.call("tenants", ids=[found["TenantId"]], take=1))["Items"]
        ]
    return found["TaskId"], environment, tenant


async def test_release_deploy_tenanted_and_runbook(fleet: LiveServer, octopus: OctopusClient) -> None:
    """Release with versions and a channel, deploy untenanted and tenanted, run a runbook: each Success."""
    assert octopus.info["version"] == "2022.3.5512" and octopus.info["installationId"]
    assert await octopus.call("resolveSpace", name="Default") == "Spaces-1"
    hotfix = {
        "ProjectName": "Shop",
        "ReleaseVersion": "1.1.0",
        "ChannelName": "Hotfix",
        "Packages": ["Shop.Web:1.1.0"],
    }
    made = await octopus.call("createRelease", **hotfix)
    assert made["ReleaseVersion"] == "1.1.0" and made["ReleaseId"].startswith("Releases-")
    again = await octopus.call("createRelease", **hotfix, IgnoreIfAlreadyExists=True)
    assert again == made  # the release that exists, no error
    taken = await octopus.refused("createRelease", **hotfix)
    assert taken["StatusCode"] == 409 and "already exists" in taken["ErrorMessage"]
    broken_rule = await octopus.refused(
        "createRelease", **{**hotfix, "ReleaseVersion": "1.1.1", "Packages": ["Web:1.0.0"]}
    )
    assert broken_rule["StatusCode"] == 400 and "Hotfix" in broken_rule["ErrorMessage"]
    plain = await octopus.call(
        "createRelease", ProjectName="Shop", ReleaseVersion="1.0.5", PackageVersion="1.0.0"
    )
    assert plain["ReleaseVersion"] == "1.0.5"

    deployed = await octopus.call(
        "deploy", ProjectName="Shop", ReleaseVersion="1.1.0", EnvironmentNames=["Dev"]
    )
    (one,) = deployed["DeploymentServerTasks"]
    assert one["DeploymentId"].startswith("Deployments-")
    tenanted = await octopus.call(
        "deployTenanted",
        ProjectName="Shop",
        ReleaseVersion="1.0.5",
        EnvironmentName="Dev",
        Tenants=["Acme"],
        TenantTags=[],
    )
    (acme,) = tenanted["DeploymentServerTasks"]
    ran = await octopus.call(
        "runRunbook",
        ProjectName="Shop",
        RunbookName="Restart",
        EnvironmentNames=["Dev"],
        SpecificMachineNames=["web-02"],
    )
    (restart,) = ran["RunbookRunServerTasks"]
    assert restart["RunbookRunId"].startswith("RunbookRuns-")

    assert await _where(octopus, "deployments", one["DeploymentId"]) == (one["ServerTaskId"], "Dev", None)
    assert await _where(octopus, "deployments", acme["DeploymentId"]) == (acme["ServerTaskId"], "Dev", "Acme")
    assert await _where(octopus, "runbookRuns", restart["RunbookRunId"]) == (
        restart["ServerTaskId"],
        "Dev",
        None,
    )
    ids = [one["ServerTaskId"], acme["ServerTaskId"], restart["ServerTaskId"]]
    for task in await _wait(octopus, *ids):
        assert task["State"] == "Success" and task["IsCompleted"] and task["FinishedSuccessfully"], task
        assert task["ErrorMessage"] == ""
    assert await _printed(fleet, ids[0]) == {
        "web-01": ["web 1.1.0 tenant=none"],
        "web-02": ["web 1.1.0 tenant=none"],
    }
    assert await _printed(fleet, ids[1]) == {"web-01": ["web 1.0.0 tenant=Acme"]}
    assert await _printed(fleet, ids[2]) == {"web-02": ["restarted web-02"]}

    single = await octopus.call("task", id=ids[1])
    assert (
        single["State"] == "Success"
        and single["SpaceId"] == "Spaces-1"
        and single["Arguments"]["TenantName"] == "Acme"
    )
    details = await octopus.call("details", id=ids[0])
    assert details["Task"]["Id"] == ids[0] and details["Progress"]["ProgressPercentage"] == 100
    (root,) = details["ActivityLogs"]
    logged = {child["Name"]: [e["MessageText"] for e in child["LogElements"]] for child in root["Children"]}
    assert sorted(logged) == ["web-01", "web-02"]
    assert all("web 1.1.0 tenant=none" in texts for texts in logged.values()), logged
    raw = await octopus.call("raw", id=ids[2])
    assert "Task status:    Success" in raw and "[web-02] Restart: restarted web-02" in raw


async def test_a_failed_deployment_and_a_cancelled_one(fleet: LiveServer, octopus: OctopusClient) -> None:
    """A failing step reads Failed with its reason; a running task cancelled by the client reads Canceled."""
    for project in ("Broken", "Slow"):
        await octopus.call("createRelease", ProjectName=project, ReleaseVersion="1.0.0")
    failed = await octopus.call(
        "deploy",
        ProjectName="Broken",
        ReleaseVersion="1.0.0",
        EnvironmentNames=["Dev"],
        SpecificMachineNames=["web-01"],
    )
    (task,) = await _wait(octopus, failed["DeploymentServerTasks"][0]["ServerTaskId"])
    assert task["State"] == "Failed" and task["IsCompleted"] and not task["FinishedSuccessfully"]
    assert task["ErrorMessage"] == "web-01 failed in step:0 (Migrate): exit code 3", task

    slow = await octopus.call(
        "deploy",
        ProjectName="Slow",
        ReleaseVersion="1.0.0",
        EnvironmentNames=["Dev"],
        ExcludedMachineNames=["web-01"],
    )
    slow_id = slow["DeploymentServerTasks"][0]["ServerTaskId"]

    async def waiting() -> bool:
        return any(line["text"] == "waiting" for line in await log_lines(fleet, slow_id))

    await eventually(waiting, 30)
    assert (await octopus.call("task", id=slow_id))["State"] == "Executing"
    assert await octopus.call("cancel", id=slow_id) is None
    (cancelled,) = await _wait(octopus, slow_id)
    assert (
        cancelled["State"] == "Canceled"
        and cancelled["IsCompleted"]
        and not cancelled["FinishedSuccessfully"]
    )
    assert "cancelled by" in cancelled["ErrorMessage"], cancelled
    assert await octopus.call("cancel", id=slow_id) is None  # an ended task: cancelling again changes nothing


def _readme_example() -> str:
    """The TypeScript example of docs/octopus.md ("Using Octopus tooling"), as written there."""
    section = (ROOT / "docs" / "octopus.md").read_text().split("# Using Octopus tooling", 1)[1]
    return section.split("```ts\n", 1)[1].split("```", 1)[0]


async def test_the_readme_example_runs_as_written(fleet: LiveServer, tmp_path: Path) -> None:
    """docs/octopus.md's client code, with this server's URL and key (Dev for Production), deploys."""
    code = _readme_example()
    for shown, real in (
        ("https://deploy.example:8443", fleet.url),
        ("API-...", fleet.admin_key),
        ('"Production"', '"Dev"'),
    ):
        assert shown in code, shown
        code = code.replace(shown, real)
    (tmp_path / "node_modules").symlink_to(MODULES)  # how an ES module finds the client
    (tmp_path / "example.mjs").write_text(code)
    env = {"PATH": os.environ["PATH"], "NODE_EXTRA_CA_CERTS": str(fleet.paths.config / server_config.CA_CERT)}
    proc = await asyncio.create_subprocess_exec(
        node(), str(tmp_path / "example.mjs"), env=env, cwd=tmp_path, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, output.decode()
    assert output.decode().splitlines()[-1] == "Success", output.decode()
