"""Spaces: created and listed by name with stable ids; nothing of one is visible or usable from another."""

from __future__ import annotations

from typing import Any

import pytest

from server_shim.store import feed_store as feed
from tests.conftest import LiveServer, Tentacles, eventually
from tests.deploying import step

SHOP = {"name": "Shop", "steps": [step("Where", 'echo "ran in $PWD"', ("web",))]}


async def _ok(live: LiveServer, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, answer = await live.api(method, path, body)
    assert got == status, answer
    return answer


async def _error(live: LiveServer, method: str, path: str, body: Any = None) -> tuple[int, str]:
    got, answer = await live.api(method, path, body)
    assert got >= 400, answer
    return got, answer["error"]["message"]


async def test_spaces_are_created_with_ids_and_listed(live_server: LiveServer) -> None:
    """Default is Spaces-1; new spaces get the next id; a taken or bad name is refused."""
    assert await _ok(live_server, "POST", "/api/spaces/v1", {"name": "Blue"}, 201) == {
        "name": "Blue",
        "id": "Spaces-2",
    }
    await _ok(live_server, "POST", "/api/spaces/v1", {"name": "Green"}, 201)
    listed = await _ok(live_server, "GET", "/api/spaces/v1")
    assert listed["items"] == [
        {"name": "Default", "id": "Spaces-1"},
        {"name": "Blue", "id": "Spaces-2"},
        {"name": "Green", "id": "Spaces-3"},
    ]
    assert await _error(live_server, "POST", "/api/spaces/v1", {"name": "blue"}) == (
        409,
        "name: space 'Blue' already exists",
    )
    status, message = await _error(live_server, "POST", "/api/spaces/v1", {"name": "no/slash"})
    assert status == 400 and message.startswith("name: space name 'no/slash' must be")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/Nowhere/machines/v1"),
        ("PUT", "/api/Nowhere/projects/Shop/v1"),
        ("POST", "/api/Nowhere/releases/create/v1"),
        ("POST", "/api/Nowhere/deployments/create/untenanted/v1"),
        ("POST", "/api/Nowhere/deployments/create/tenanted/v1"),
        ("GET", "/api/Nowhere/tenants/v1"),
        ("PUT", "/api/Nowhere/tenants/Acme/v1"),
        ("PUT", "/api/Nowhere/tagsets/Region/v1"),
        ("GET", "/api/Nowhere/tasks/T-000000000000/v1"),
    ],
)
async def test_every_space_route_refuses_an_unknown_space(
    live_server: LiveServer, method: str, path: str
) -> None:
    """An unknown space is a 404 naming it, whatever the route, before the body is read."""
    assert await _error(live_server, method, path, {}) == (404, "space 'Nowhere' does not exist")


async def test_projects_releases_tenants_and_feeds_stay_in_their_space(live_server: LiveServer) -> None:
    """The same names in two spaces are two things; what one space has, another cannot see or use."""
    live = live_server
    await _ok(live, "POST", "/api/spaces/v1", {"name": "Blue"}, 201)
    blue_shop = {**SHOP, "variables": [{"name": "Colour", "value": "blue"}]}
    await _ok(live, "PUT", "/api/Default/projects/Shop/v1", SHOP, 201)
    await _ok(live, "PUT", "/api/Blue/projects/Shop/v1", blue_shop, 201)  # created: not Default's
    await _ok(live, "PUT", "/api/Default/projects/OnlyDefault/v1", SHOP | {"name": "OnlyDefault"}, 201)
    assert (await _ok(live, "GET", "/api/Blue/projects/Shop/v1"))["variables"][0]["value"] == "blue"
    assert (await _ok(live, "GET", "/api/Default/projects/Shop/v1"))["variables"] == []
    assert (await _error(live, "GET", "/api/Blue/projects/OnlyDefault/v1"))[0] == 404
    release = {"projectName": "Shop", "releaseVersion": "1.0.0"}
    await _ok(live, "POST", "/api/Default/releases/create/v1", release, 201)
    await _ok(live, "POST", "/api/Blue/releases/create/v1", release, 201)  # 1.0.0 is free in Blue
    missing = {"projectName": "OnlyDefault", "releaseVersion": "1.0.0"}
    assert await _error(live, "POST", "/api/Blue/releases/create/v1", missing) == (
        404,
        "project 'OnlyDefault' does not exist in space 'Blue'",
    )
    await _ok(live, "PUT", "/api/Default/tagsets/Region/v1", {"tags": ["EU"]}, 201)
    status, message = await _error(live, "PUT", "/api/Blue/tenants/Acme/v1", {"tags": ["Region/EU"]})
    assert (status, message) == (400, "tags[0]: tag set 'Region' does not exist in space 'Blue'")
    await _ok(
        live,
        "PUT",
        "/api/Default/tenants/Acme/v1",
        {"tags": ["Region/EU"], "projects": {"Shop": ["Dev"]}},
        201,
    )
    await _ok(live, "PUT", "/api/Blue/tenants/Acme/v1", {"projects": {"Shop": ["Test"]}}, 201)
    blue = (await _ok(live, "GET", "/api/Blue/tenants/v1"))["items"]
    assert [(t["name"], t["projects"], t["tags"]) for t in blue] == [("Acme", {"Shop": ["Test"]}, [])]
    assert (await _ok(live, "GET", "/api/Blue/tagsets/v1"))["items"] == []
    await live.server.db.run(feed.add_feed, "near", ["https://mirror.example/v3/index.json"], "Blue")
    assert await live.server.db.run(feed.feed_mirrors, "Default") == {}
    assert await live.server.db.run(feed.feed_mirrors, "Blue") == {
        "near": ["https://mirror.example/v3/index.json"]
    }


async def _online(live: LiveServer, name: str, space: str) -> None:
    async def check() -> bool:
        return live.server.fleet.is_online(name, space)

    await eventually(check, 10)


async def test_one_machine_name_in_two_spaces_is_two_machines(
    live_server: LiveServer, tentacles: Tentacles, mode: str
) -> None:
    """web-01 registers in Default and in Blue; each space deploys to, lists and removes its own."""
    live = live_server
    await _ok(live, "POST", "/api/spaces/v1", {"name": "Blue"}, 201)
    await tentacles.register("web-01", mode, home="default-web")
    await tentacles.register("web-01", mode, home="blue-web", space="Blue")
    for home in ("default-web", "blue-web"):
        await tentacles.start(home)
    await _online(live, "web-01", "Default")
    await _online(live, "web-01", "Blue")
    default_list = (await _ok(live, "GET", "/api/Default/machines/v1"))["items"]
    blue_list = (await _ok(live, "GET", "/api/Blue/machines/v1"))["items"]
    assert [m["space"] for m in default_list] == ["Default"] and [m["space"] for m in blue_list] == ["Blue"]
    assert default_list[0]["thumbprint"] != blue_list[0]["thumbprint"]
    ran = {}
    for space in ("Default", "Blue"):
        await _ok(live, "PUT", f"/api/{space}/projects/Shop/v1", SHOP, 201)
        await _ok(
            live,
            "POST",
            f"/api/{space}/releases/create/v1",
            {"projectName": "Shop", "releaseVersion": "1.0.0"},
            201,
        )
        body = {"projectName": "Shop", "releaseVersion": "1.0.0", "environmentNames": ["Dev"]}
        task_id = (await _ok(live, "POST", f"/api/{space}/deployments/create/untenanted/v1", body, 201))[
            "taskId"
        ]
        ran[space] = task_id
    for space, task_id in ran.items():
        other = "Blue" if space == "Default" else "Default"
        assert (await _error(live, "GET", f"/api/{other}/tasks/{task_id}/v1"))[0] == 404
        assert (await _error(live, "POST", f"/api/{other}/tasks/{task_id}/cancel/v1"))[0] == 404
        await _wait_success(live, space, task_id)
        log = await _ok(live, "GET", f"/api/{space}/tasks/{task_id}/log/v1")
        where = next(line["text"] for line in log["items"] if line["text"].startswith("ran in"))
        assert ("blue-web" in where) is (space == "Blue"), where
    await _ok(live, "DELETE", "/api/Blue/machines/web-01/v1")
    assert (await _ok(live, "GET", "/api/Blue/machines/v1"))["items"] == []
    assert [m["name"] for m in (await _ok(live, "GET", "/api/Default/machines/v1"))["items"]] == ["web-01"]
    assert live.server.fleet.is_online("web-01", "Default")


async def _wait_success(live: LiveServer, space: str, task_id: str) -> None:
    async def done() -> bool:
        task = await _ok(live, "GET", f"/api/{space}/tasks/{task_id}/v1")
        assert task["state"] not in ("failed", "cancelled"), task
        return bool(task["state"] == "success")

    await eventually(done, 30)


async def test_registration_into_an_unknown_space_is_refused(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """`register --space Nowhere` is a clear error and registers nothing."""
    from tentacle.errors import RemoteError

    with pytest.raises(RemoteError, match="space 'Nowhere' does not exist"):
        await tentacles.register("web-01", "polling", space="Nowhere")
    assert await live_server.machines() == {}
