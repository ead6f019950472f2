"""Deploy actions: the Octopus deployment target trigger, and deployments from a webhook.

Real tentacles in both modes: a machine that registers gets the project's latest release by
itself (that machine alone), and is left alone when it comes back online already having it.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer, Tentacles, eventually
from tests.deploying import apply, deploy, release, step, wait_task
from tests.test_reaction_http import put_reaction, settled
from tests.test_reaction_scripts import call_hook

SHOP = {"name": "Shop", "steps": [step("Hello", "echo hello from $TENTACLE_MACHINE_NAME")]}
TARGET_TRIGGER = {
    "trigger": {"events": ["machineRegistered", "machineOnline"], "environments": ["Dev"], "roles": ["web"]},
    "action": {"deploy": {"projectName": "Shop", "environmentName": "Dev", "release": "latest"}},
}


async def queued_tasks(live: LiveServer) -> list[dict[str, Any]]:
    """The deploymentQueued events so far."""
    status, page = await live.api("GET", "/api/Default/events/v1?kind=deploymentQueued")
    assert status == 200
    return list(page["items"])


async def test_a_new_machine_gets_the_latest_release_by_itself(
    live_server: LiveServer, tentacles: Tentacles, mode: str
) -> None:
    """A registering web machine gets the latest release (it alone); coming back online with it,
    it is skipped; a machine outside the trigger's filters is not deployed to."""
    await tentacles.bring_online(mode, {"web-1": ("web",)})
    await apply(live_server, SHOP)
    await release(live_server, "Shop", "1.0.0")
    latest = await release(live_server, "Shop", "1.2.0")
    first = await deploy(live_server, "Shop", latest)
    assert (await wait_task(live_server, first))["state"] == "success"
    await put_reaction(live_server, "target", TARGET_TRIGGER)
    await tentacles.register("web-2", mode)
    await tentacles.start("web-2")
    await tentacles.register("db-1", mode, roles=("db",))
    await tentacles.start("db-1")
    await eventually(lambda: live_server.online("web-2", "db-1"), 10)
    deliveries = await settled(live_server, "target", 2, timeout=30)  # web-2 registered, then online
    assert [d["eventKind"] for d in deliveries] == ["machineRegistered", "machineOnline"]
    [_, created] = await queued_tasks(live_server)
    assert created["releaseVersion"] == latest
    done = await wait_task(live_server, created["taskId"])
    assert done["state"] == "success" and [t["machineName"] for t in done["targets"]] == ["web-2"]
    assert deliveries[0]["attempts"][0]["log"].startswith(f"task {created['taskId']}: Shop {latest} to Dev")
    skipped = deliveries[1]["attempts"][0]["log"]
    assert deliveries[1]["state"] == "succeeded" and "already has release 1.2.0" in skipped
    await tentacles.stop("web-2")
    await eventually(lambda: not live_server.online("web-2"), 15)
    await tentacles.start("web-2")
    again = await settled(live_server, "target", 3, timeout=30)
    assert "already has release 1.2.0" in again[-1]["attempts"][0]["log"]
    assert len(await queued_tasks(live_server)) == 2


async def test_a_webhook_deploys_the_latest_release(live_server: LiveServer, tentacles: Tentacles) -> None:
    """A webhook with a deploy action deploys the project's latest release to the environment."""
    await tentacles.bring_online("polling", {"web-1": ("web",), "web-2": ("web",)})
    await apply(live_server, SHOP)
    await release(live_server, "Shop", "2.0.0")
    await release(live_server, "Shop", "10.0.0")
    doc = {"trigger": {"webhook": True}, "action": TARGET_TRIGGER["action"]}
    await put_reaction(live_server, "ship", doc)
    status, _ = await call_hook(live_server, "ship", b'{"any": "thing"}')
    assert status == 202
    await settled(live_server, "ship", 1)
    [created] = await queued_tasks(live_server)
    done = await wait_task(live_server, created["taskId"])
    assert created["releaseVersion"] == "10.0.0" and done["state"] == "success"
    assert sorted(t["machineName"] for t in done["targets"]) == ["web-1", "web-2"]


async def test_a_project_without_a_release_fails_the_delivery(live_server: LiveServer) -> None:
    """Nothing to deploy is a final failure with the reason, and a reactionFailed event."""
    await apply(live_server, SHOP)
    await put_reaction(
        live_server, "ship", {"trigger": {"webhook": True}, "action": TARGET_TRIGGER["action"]}
    )
    await call_hook(live_server, "ship", b"{}")
    [delivery] = await settled(live_server, "ship", 1)
    assert delivery["state"] == "failed" and delivery["error"] == "project 'Shop' has no release to deploy"
    status, page = await live_server.api("GET", "/api/Default/events/v1?kind=reactionFailed")
    assert status == 200 and page["items"][0]["details"]["reaction"] == "ship"


async def test_a_deploy_set_off_by_its_own_deployment_is_skipped(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """Deploying a project again on the end of its own deployment to that environment would
    loop forever: the delivery succeeds, saying so, and no second deployment is made."""
    await tentacles.bring_online("polling", {"web-1": ("web",)})
    await apply(live_server, SHOP)
    version = await release(live_server, "Shop", "1.0.0")
    doc = {"trigger": {"events": ["deploymentSucceeded"]}, "action": TARGET_TRIGGER["action"]}
    await put_reaction(live_server, "again", doc)
    first = await deploy(live_server, "Shop", version)
    assert (await wait_task(live_server, first))["state"] == "success"
    [delivery] = await settled(live_server, "again", 1)
    assert delivery["state"] == "succeeded"
    assert "a deployment of Shop to Dev set this off (a loop)" in delivery["attempts"][0]["log"]
    assert [e["taskId"] for e in await queued_tasks(live_server)] == [first]
