"""Tag sets, tenants and tenanted deployments: a real server and real tentacles.

The fleet: web-acme serves tenant Acme by name; web-eu serves every tenant tagged Region/EU;
web-shared takes part in both kinds of deployment and serves the Tier/Gold tenants; web-plain
is untenanted. Tenants: Acme (EU, Gold) and Globex (US, Gold) are connected to Shop in Dev;
Initech (EU, Silver) to Shop in Test only.
"""

from __future__ import annotations

from typing import Any

import pytest

from server_shim.store import tenants as tenant_rows
from tests.conftest import LiveServer, Tentacles, eventually
from tests.deploying import log_lines, wait_task

SHOP = {
    "name": "Shop",
    "steps": [
        {
            "name": "Hello",
            "roles": ["web"],
            "script": {
                "syntax": "bash",
                "body": 'echo "greeting=$Greeting tenant=${TENTACLE_TENANT_NAME:-none} secret=$Secret"',
            },
        }
    ],
    "variables": [
        {"name": "Greeting", "value": "hello"},
        {"name": "Secret", "value": "project-secret", "sensitive": True},
    ],
}
ACME = {
    "name": "Acme",
    "tags": ["Region/EU", "Tier/Gold"],
    "projects": {"Shop": ["Dev"]},
    "variables": [
        {"name": "Greeting", "value": "hi-acme", "environments": ["Dev"]},
        {"name": "Secret", "value": "acme-s3cret", "sensitive": True},
    ],
}
GLOBEX = {"tags": ["Region/US", "Tier/Gold"], "projects": {"Shop": ["Dev"]}}
INITECH = {"tags": ["Region/EU", "Tier/Silver"], "projects": {"Shop": ["Test"]}}
FLEET: dict[str, dict[str, Any]] = {
    "web-acme": {"tenants": ("Acme",), "tenanted_deployment": "tenanted"},
    "web-eu": {"tenant_tags": ("Region/EU",)},  # tenanted by default: it names tags
    "web-shared": {"tenant_tags": ("Tier/Gold",), "tenanted_deployment": "both"},
    "web-plain": {},
}


async def _ok(live: LiveServer, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, answer = await live.api(method, path, body)
    assert got == status, answer
    return answer


async def _refused(live: LiveServer, path: str, body: Any) -> tuple[int, str]:
    got, answer = await live.api("POST" if "create" in path else "PUT", path, body)
    assert got >= 400, answer
    return got, str(answer["error"]["message"])


async def _tasks(live: LiveServer) -> int:
    return int(
        await live.server.db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
    )


async def _setup(live: LiveServer) -> None:
    await _ok(live, "PUT", "/api/Default/tagsets/Region/v1", {"tags": ["EU", "US"]}, 201)
    await _ok(live, "PUT", "/api/Default/tagsets/Tier/v1", {"tags": ["Gold", "Silver"]}, 201)
    await _ok(live, "PUT", "/api/Default/projects/Shop/v1", SHOP, 201)
    await _ok(live, "PUT", "/api/Default/tenants/Acme/v1", ACME, 201)
    await _ok(live, "PUT", "/api/Default/tenants/Globex/v1", GLOBEX, 201)
    await _ok(live, "PUT", "/api/Default/tenants/Initech/v1", INITECH, 201)
    await _ok(
        live,
        "POST",
        "/api/Default/releases/create/v1",
        {"projectName": "Shop", "releaseVersion": "1.0.0"},
        201,
    )


@pytest.fixture
async def tenanted(live_server: LiveServer, tentacles: Tentacles, mode: str) -> LiveServer:
    """The tag sets, tenants, project, release and the four machines, online."""
    await _setup(live_server)
    for name, claims in FLEET.items():
        await tentacles.register(name, mode, **claims)
        await tentacles.start(name)

    async def online() -> bool:
        return all(live_server.server.fleet.is_online(name) for name in FLEET)

    await eventually(online, 10)
    return live_server


def _greetings(lines: list[dict[str, Any]]) -> dict[str, str]:
    return {line["machineName"]: line["text"] for line in lines if line["text"].startswith("greeting=")}


async def test_one_task_per_tenant_to_its_machines_with_its_variables(tenanted: LiveServer) -> None:
    """Tier/Gold reaches Acme and Globex: each task goes to the machines serving it, with its variables."""
    live = tenanted
    body = {
        "projectName": "Shop",
        "releaseVersion": "1.0.0",
        "environmentName": "Dev",
        "tenantTags": ["Tier/Gold"],
    }
    answer = await _ok(live, "POST", "/api/Default/deployments/create/tenanted/v1", body, 201)
    by_tenant = {d["tenantName"]: d["taskId"] for d in answer["deployments"]}
    assert sorted(by_tenant) == ["Acme", "Globex"]
    acme = await wait_task(live, by_tenant["Acme"], timeout=60)
    globex = await wait_task(live, by_tenant["Globex"], timeout=60)
    assert acme["state"] == globex["state"] == "success", (acme, globex)
    assert (acme["tenantName"], globex["tenantName"]) == ("Acme", "Globex")
    assert sorted(t["machineName"] for t in acme["targets"]) == ["web-acme", "web-eu", "web-shared"]
    assert [t["machineName"] for t in globex["targets"]] == ["web-shared"]
    acme_lines = _greetings(await log_lines(live, by_tenant["Acme"]))
    assert acme_lines["web-acme"] == "greeting=hi-acme tenant=Acme secret=********"
    globex_lines = _greetings(await log_lines(live, by_tenant["Globex"]))
    assert globex_lines == {"web-shared": "greeting=hello tenant=Globex secret=********"}
    # An untenanted deployment of the same release goes to the untenanted and "both" machines.
    body = {"projectName": "Shop", "releaseVersion": "1.0.0", "environmentNames": ["Dev"]}
    task_id = (await _ok(live, "POST", "/api/Default/deployments/create/untenanted/v1", body, 201))["taskId"]
    plain = await wait_task(live, task_id, timeout=60)
    assert sorted(t["machineName"] for t in plain["targets"]) == ["web-plain", "web-shared"]
    assert "tenantName" not in plain
    assert (
        _greetings(await log_lines(live, task_id))["web-plain"]
        == "greeting=hello tenant=none secret=********"
    )


async def test_tenants_by_name_and_tags_and_the_machines_list(tenanted: LiveServer, mode: str) -> None:
    """Names and tags add up (Globex by name, Acme by Region/EU AND Gold); machines show their tenancy."""
    live = tenanted
    body = {
        "projectName": "Shop",
        "releaseVersion": "1.0.0",
        "environmentName": "Dev",
        "tenantNames": ["Globex"],
        "tenantTags": ["Region/EU", "Tier/Gold"],
    }
    answer = await _ok(live, "POST", "/api/Default/deployments/create/tenanted/v1", body, 201)
    assert [d["tenantName"] for d in answer["deployments"]] == ["Acme", "Globex"]  # Initech is not in Dev
    machines = await live.machines()
    assert (machines["web-acme"]["tenants"], machines["web-acme"]["tenantedDeployment"]) == (
        ["Acme"],
        "tenanted",
    )
    assert (machines["web-eu"]["tenantTags"], machines["web-eu"]["tenantedDeployment"]) == (
        ["Region/EU"],
        "tenanted",
    )
    assert machines["web-shared"]["tenantedDeployment"] == "both"
    assert machines["web-plain"]["tenantedDeployment"] == "untenanted"
    for task in answer["deployments"]:
        assert (await wait_task(live, task["taskId"], timeout=60))["state"] == "success"


@pytest.fixture
async def configured(live_server: LiveServer, tentacles: Tentacles) -> LiveServer:
    """The tenants and one polling machine per tenancy (for refusals that need no run)."""
    await _setup(live_server)
    for name, claims in FLEET.items():
        await tentacles.register(name, "polling", **claims)
    return live_server


TENANTED = "/api/Default/deployments/create/tenanted/v1"
BASE = {"projectName": "Shop", "releaseVersion": "1.0.0", "environmentName": "Dev"}


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        ({"tenantNames": ["Nope"]}, 404, "tenantNames[0]: tenant 'Nope' does not exist in space 'Default'"),
        (
            {"tenantTags": ["Region/Mars"]},
            400,
            "tenantTags[0]: tag set 'Region' has no tag 'Mars' (it has: EU, US)",
        ),
        (
            {"tenantTags": ["Planet/Mars"]},
            400,
            "tenantTags[0]: tag set 'Planet' does not exist in space 'Default'",
        ),
        ({"tenantTags": ["Gold"]}, 400, "tenantTags[0]: tag 'Gold' must be TagSet/Tag (e.g. Region/EU)"),
        (
            {"tenantNames": ["Acme", "Initech"]},
            400,
            "tenantNames[1]: tenant 'Initech' is not connected to project 'Shop' in environment 'Dev'",
        ),
        ({}, 400, "tenantNames: give tenantNames or tenantTags (or both)"),
        (
            {"tenantTags": ["Tier/Silver"]},
            400,
            "tenantTags: no tenant with tags Tier/Silver is connected to project 'Shop' in environment 'Dev'",
        ),
        (
            {"tenantNames": ["Acme"], "excludedMachineNames": ["web-acme", "web-eu", "web-shared"]},
            400,
            "tenant 'Acme': no tenanted machine of the tenant in Dev has any of the roles web"
            " (after excludedMachineNames)",
        ),
        (
            {"tenantNames": ["Globex"], "specificMachineNames": ["web-shared", "web-acme"]},
            400,
            "specificMachineNames: web-acme serve none of the tenants Globex",
        ),
        (
            {"tenantNames": ["Acme"], "skipStepNames": ["Nope"]},
            404,
            "skipStepNames[0]: project 'Shop' has no step 'Nope'",
        ),
    ],
)
async def test_bad_tenanted_deployments_name_what_is_wrong_and_create_nothing(
    configured: LiveServer, extra: dict[str, Any], status: int, message: str
) -> None:
    """Each refusal is a 4xx naming the tenant, tag, set, step or machine; no task is stored."""
    assert await _refused(configured, TENANTED, {**BASE, **extra}) == (status, message)
    assert await _tasks(configured) == 0


async def test_a_project_without_tenants_is_refused_for_tenanted_deployment(configured: LiveServer) -> None:
    """A project no tenant is connected to is untenanted-only: a 400 saying so."""
    live = configured
    await _ok(live, "PUT", "/api/Default/projects/Solo/v1", {**SHOP, "name": "Solo"}, 201)
    await _ok(
        live,
        "POST",
        "/api/Default/releases/create/v1",
        {"projectName": "Solo", "releaseVersion": "1.0.0"},
        201,
    )
    for who in ({"tenantNames": ["Acme"]}, {"tenantTags": ["Tier/Gold"]}):
        status, message = await _refused(live, TENANTED, {**BASE, "projectName": "Solo", **who})
        assert status == 400
        assert message.startswith("project 'Solo' has no tenants connected: deploy it untenanted")
    assert await _tasks(live) == 0


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"projects": {"Nope": ["Dev"]}}, "projects.Nope: project 'Nope' does not exist in space 'Default'"),
        ({"tags": ["Region/Mars"]}, "tags[0]: tag set 'Region' has no tag 'Mars' (it has: EU, US)"),
        (
            {"variables": [{"name": "A"}]},
            "variables[0].value: required (only a sensitive value may be left out",
        ),
        ({"name": "Other"}, "name: must match the name in the URL 'Acme'"),
        ({"tags": "Region/EU"}, "tags: expected a list, got a string"),
    ],
)
async def test_bad_tenant_documents_name_the_path(
    configured: LiveServer, doc: dict[str, Any], message: str
) -> None:
    """A tenant naming what does not exist, or misshapen, is a 400 naming the path; nothing changes."""
    status, got = await _refused(configured, "/api/Default/tenants/Acme/v1", doc)
    assert status == 400 and got.startswith(message), got
    tenants = (await _ok(configured, "GET", "/api/Default/tenants/v1"))["items"]
    assert next(t for t in tenants if t["name"] == "Acme")["tags"] == ACME["tags"]


async def test_sensitive_tenant_values_are_never_given_back_and_kept_when_left_out(
    configured: LiveServer,
) -> None:
    """GET leaves sensitive values out; a PUT without one keeps the stored value; others must be given."""
    live = configured
    acme = await _ok(live, "GET", "/api/Default/tenants/Acme/v1")
    secret = next(v for v in acme["variables"] if v["name"] == "Secret")
    assert "value" not in secret and secret["sensitive"] is True
    assert "acme-s3cret" not in str(await _ok(live, "GET", "/api/Default/tenants/v1"))
    await _ok(live, "PUT", "/api/Default/tenants/Acme/v1", acme)  # what GET gave, sent back
    stored = await live.server.db.run(
        lambda conn: conn.execute("SELECT document FROM tenants WHERE name = 'Acme'").fetchone()[0]
    )
    assert "acme-s3cret" not in stored  # sealed at rest, as projects' secrets are
    kept = await live.server.db.run(tenant_rows.find, "Default", "Acme")
    assert kept is not None
    assert next(v.value for v in kept.document.variables if v.name == "Secret") == "acme-s3cret"
    changed = {**acme, "variables": [{"name": "Secret", "sensitive": True, "environments": ["Dev"]}]}
    status, message = await _refused(
        live, "/api/Default/tenants/Acme/v1", changed
    )  # another scope: nothing to keep
    assert (status, message) == (400, "variables[0].value: required (no value is stored for it to keep)")


async def test_a_tag_set_cannot_drop_a_tag_in_use(configured: LiveServer) -> None:
    """Replacing Region without EU is a 409 naming the tenants and machines that carry Region/EU."""
    status, message = await _refused(configured, "/api/Default/tagsets/Region/v1", {"tags": ["US"]})
    assert status == 409
    assert "Region/EU by tenant 'Acme', tenant 'Initech', machine 'web-eu'" in message
    await _ok(configured, "PUT", "/api/Default/tagsets/Region/v1", {"tags": ["EU", "US", "APAC"]})


async def test_registration_checks_tenants_and_tags(configured: LiveServer, tentacles: Tentacles) -> None:
    """An unknown tenant or tag is refused at registration; untenanted with tenants is a usage error."""
    from tentacle.errors import RemoteError, UsageError

    with pytest.raises(RemoteError, match=r"tenants\[0\]: tenant 'Nope' does not exist in space 'Default'"):
        await tentacles.register("web-x", "polling", tenants=("Nope",))
    with pytest.raises(RemoteError, match=r"tenantTags\[0\]: tag set 'Planet' does not exist"):
        await tentacles.register("web-x", "polling", tenant_tags=("Planet/Mars",))
    with pytest.raises(UsageError, match="need --tenanted-deployment tenanted or both"):
        await tentacles.register("web-x", "polling", tenants=("Acme",), tenanted_deployment="untenanted")
    assert "web-x" not in await configured.machines()
