"""Deployments end to end: real server, real tentacles in both modes, real bash steps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import LiveServer, Tentacles, eventually
from tests.deploying import apply, deploy, release, step, task, texts, wait_task


@pytest.fixture
async def two(live_server: LiveServer, tentacles: Tentacles, mode: str) -> LiveServer:
    """web-01 (role web) and db-01 (role db), online, in the test's mode."""
    await tentacles.bring_online(mode, {"web-01": ("web",), "db-01": ("db",)})
    return live_server


async def test_steps_run_by_role_with_variables_and_context(two: LiveServer) -> None:
    """Each target runs its steps, sees the variables of its environment and the TENTACLE_* names."""
    doc = {
        "name": "Shop",
        "steps": [
            step("Hello", 'echo "pre on $TENTACLE_MACHINE_NAME"', ("web", "db"), phase="preAcquisition"),
            step("Web", 'echo "web sees $Greeting in $TENTACLE_ENVIRONMENT for $TENTACLE_PROJECT"', ("web",)),
            step("Db", 'echo "db release $TENTACLE_RELEASE_VERSION task $TENTACLE_TASK_ID"', ("db",)),
        ],
        "variables": [
            {"name": "Greeting", "value": "hello-dev", "environments": ["Dev"]},
            {"name": "Greeting", "value": "hello-prod", "environments": ["Production"]},
        ],
    }
    await apply(two, doc)
    version = await release(two, "Shop")
    task_id = await deploy(two, "Shop", version)
    done = await wait_task(two, task_id)
    assert done["state"] == "success", done.get("error")
    web, db = await texts(two, task_id, "web-01"), await texts(two, task_id, "db-01")
    assert "pre on web-01" in web and "pre on db-01" in db
    assert "web sees hello-dev in Dev for Shop" in web
    assert f"db release {version} task {task_id}" in db
    assert not any("db release" in line for line in web)
    assert {t["machineName"]: t["state"] for t in done["targets"]} == {
        "web-01": "success",
        "db-01": "success",
    }


async def test_slow_pre_acquisition_on_one_target_holds_every_other(two: LiveServer, tmp_path: Path) -> None:
    """No target starts a deployment step before every target finished pre-acquisition."""
    marks = tmp_path / "marks"
    marks.mkdir()
    slow = (
        'if [ "$TENTACLE_MACHINE_NAME" = db-01 ]; then sleep 2; fi;'
        f" date +%s.%N > {marks}/pre-$TENTACLE_MACHINE_NAME"
    )
    doc = {
        "name": "Gates",
        "steps": [
            step("Pre", slow, ("web", "db"), phase="preAcquisition"),
            step("Go", f"date +%s.%N > {marks}/step-$TENTACLE_MACHINE_NAME", ("web", "db")),
        ],
    }
    await apply(two, doc)
    task_id = await deploy(two, "Gates", await release(two, "Gates"))
    assert (await wait_task(two, task_id))["state"] == "success"
    pre_done = max(float((marks / f"pre-{n}").read_text()) for n in ("web-01", "db-01"))
    first_step = min(float((marks / f"step-{n}").read_text()) for n in ("web-01", "db-01"))
    assert first_step >= pre_done


async def test_failure_before_deployment_steps_runs_no_step_anywhere(two: LiveServer, tmp_path: Path) -> None:
    """A failed pre-acquisition step on one target means no deployment step runs on any target."""
    doc = {
        "name": "Vpn",
        "steps": [
            step(
                "Open VPN",
                '[ "$TENTACLE_MACHINE_NAME" != db-01 ] || { echo no tunnel >&2; exit 3; }',
                ("web", "db"),
                phase="preAcquisition",
            ),
            step("Deploy", f"touch {tmp_path}/ran-$TENTACLE_MACHINE_NAME", ("web", "db")),
        ],
    }
    await apply(two, doc)
    task_id = await deploy(two, "Vpn", await release(two, "Vpn"))
    done = await wait_task(two, task_id)
    assert done["state"] == "failed"
    assert "db-01" in done["error"] and "exit code 3" in done["error"]
    assert list(tmp_path.glob("ran-*")) == []
    assert "no tunnel" in await texts(two, task_id, "db-01")


async def test_a_failed_step_fails_the_task_and_later_steps_do_not_run(
    two: LiveServer, tmp_path: Path
) -> None:
    """Step 1 failing on one target stops step 2 everywhere."""
    doc = {
        "name": "Stop",
        "steps": [
            step("One", '[ "$TENTACLE_MACHINE_NAME" = web-01 ] && exit 1; true', ("web", "db")),
            step("Two", f"touch {tmp_path}/two-$TENTACLE_MACHINE_NAME", ("web", "db")),
        ],
    }
    await apply(two, doc)
    task_id = await deploy(two, "Stop", await release(two, "Stop"))
    done = await wait_task(two, task_id)
    assert done["state"] == "failed" and "web-01" in done["error"]
    assert list(tmp_path.glob("two-*")) == []


async def test_sensitive_values_never_reach_any_log(two: LiveServer, tentacles: Tentacles) -> None:
    """A sensitive variable printed by a script is masked at the server and on the tentacle's disk."""
    doc = {
        "name": "Secret",
        "steps": [step("Leak", 'echo "password is $DbPassword!"', ("web",))],
        "variables": [{"name": "DbPassword", "value": "s3cr3t-value", "sensitive": True}],
    }
    await apply(two, doc)
    task_id = await deploy(two, "Secret", await release(two, "Secret"))
    assert (await wait_task(two, task_id))["state"] == "success"
    assert "password is ********!" in await texts(two, task_id, "web-01")
    for path in (tentacles.root / "web-01").rglob("*"):
        if path.is_file() and path.suffix in (".jsonl", ".log"):
            assert b"s3cr3t-value" not in path.read_bytes(), path


async def test_log_lines_are_visible_within_a_second(two: LiveServer) -> None:
    """A line printed by a running step is readable through the log API within 1 s."""
    doc = {"name": "Live", "steps": [step("Talk", 'echo "at $(date +%s.%N)"; sleep 3', ("web",))]}
    await apply(two, doc)
    task_id = await deploy(two, "Live", await release(two, "Live"))

    async def seen() -> bool:
        return any(t.startswith("at ") for t in await texts(two, task_id))

    await eventually(seen, 10, every=0.05)
    printed = float(next(t for t in await texts(two, task_id) if t.startswith("at "))[3:])
    assert time.time() - printed < 1.0
    await wait_task(two, task_id)


async def test_cancel_stops_a_running_step(two: LiveServer) -> None:
    """Cancelling a task terminates its running script and ends the task cancelled."""
    doc = {"name": "Long", "steps": [step("Sleep", "echo started; sleep 60", ("web",))]}
    await apply(two, doc)
    task_id = await deploy(two, "Long", await release(two, "Long"))

    async def started() -> bool:
        return "started" in await texts(two, task_id)

    await eventually(started, 10)
    status, answer = await two.api("POST", f"/api/Default/tasks/{task_id}/cancel/v1")
    assert status == 202, answer
    began = time.monotonic()
    done = await wait_task(two, task_id, timeout=20)
    assert done["state"] == "cancelled" and time.monotonic() - began < 15


async def test_a_step_that_starts_a_daemon_does_not_hang(two: LiveServer) -> None:
    """A background process left running by a step does not hold the task open."""
    doc = {"name": "Daemon", "steps": [step("Start", "sleep 120 & echo started $!", ("web",))]}
    await apply(two, doc)
    task_id = await deploy(two, "Daemon", await release(two, "Daemon"))
    done = await wait_task(two, task_id, timeout=15)
    assert done["state"] == "success"
    pid = int(next(t for t in await texts(two, task_id) if t.startswith("started")).split()[1])
    import os
    import signal

    os.kill(pid, signal.SIGKILL)


async def test_runbook_runs_on_matching_targets(two: LiveServer) -> None:
    """A runbook run is one request and runs the runbook's steps on targets with its roles."""
    doc = {
        "name": "Ops",
        "steps": [],
        "runbooks": {"Restart": {"steps": [step("Restart", "echo restarting", ("db",))]}},
    }
    await apply(two, doc)
    body = {"projectName": "Ops", "runbookName": "Restart", "environmentNames": ["Dev"]}
    status, answer = await two.api("POST", "/api/Default/runbook-runs/create/v1", body)
    assert status == 201, answer
    done = await wait_task(two, answer["taskId"])
    assert done["state"] == "success" and [t["machineName"] for t in done["targets"]] == ["db-01"]
    assert "restarting" in await texts(two, answer["taskId"], "db-01")


async def test_tasks_on_one_target_wait_their_turn(two: LiveServer) -> None:
    """A second task for a busy target stays visibly queued until the first finishes."""
    doc = {"name": "Turns", "steps": [step("Sleep", "sleep 1.5", ("web",))]}
    await apply(two, doc)
    first = await deploy(two, "Turns", await release(two, "Turns"))
    second = await deploy(two, "Turns", await release(two, "Turns"))
    assert (await task(two, second))["state"] == "queued", await task(two, first)
    first_done = await wait_task(two, first)
    assert first_done["state"] == "success", first_done.get("error")
    second_done = await wait_task(two, second)
    assert second_done["state"] == "success", second_done.get("error")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"projectName": "Nope", "releaseVersion": "1.0.0", "environmentNames": ["Dev"]}, 404, "Nope"),
        ({"projectName": "Bad", "releaseVersion": "9.9.9", "environmentNames": ["Dev"]}, 404, "9.9.9"),
        ({"projectName": "Bad", "releaseVersion": "1.0.0", "environmentNames": ["Mars"]}, 404, "Mars"),
        (
            {
                "projectName": "Bad",
                "releaseVersion": "1.0.0",
                "environmentNames": ["Dev"],
                "machineNames": ["ghost"],
            },
            404,
            "ghost",
        ),
        ({"projectName": "Bad", "releaseVersion": "1.0.0", "environmentNames": []}, 400, "environmentNames"),
        ({"projectName": 7, "releaseVersion": "1.0.0", "environmentNames": ["Dev"]}, 400, "projectName"),
        (
            {"projectName": "Bad", "releaseVersion": "1.0.0", "environmentNames": "Dev"},
            400,
            "environmentNames",
        ),
        ({"projectName": "Bad", "releaseVersion": "1.0.0", "environmentNames": ["Dev"], "x": 1}, 400, "x"),
    ],
)
async def test_bad_deployment_requests_are_4xx_and_create_nothing(
    live_server: LiveServer, tentacles: Tentacles, body: dict[str, object], status: int, message: str
) -> None:
    """Unknown project, release, environment or machine, and wrong types, are 4xx naming the problem."""
    await tentacles.register("web-01", "polling")
    await apply(live_server, {"name": "Bad", "steps": [step("S", "true", ("web",))]})
    await release(live_server, "Bad", "1.0.0")
    got, answer = await live_server.api("POST", "/api/Default/deployments/create/untenanted/v1", body)
    assert got == status, answer
    assert message in answer["error"]["message"]
    assert live_server.server.db.sync(lambda c: c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]) == 0


async def test_environment_without_matching_roles_is_refused(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """An environment whose machines hold none of the steps' roles is a 400 that says so."""
    await tentacles.register("web-01", "polling", roles=("web",))
    await apply(live_server, {"name": "Db", "steps": [step("S", "true", ("db",))]})
    body = {
        "projectName": "Db",
        "releaseVersion": await release(live_server, "Db"),
        "environmentNames": ["Dev"],
    }
    got, answer = await live_server.api("POST", "/api/Default/deployments/create/untenanted/v1", body)
    assert got == 400 and "roles db" in answer["error"]["message"]


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[]", b'{"projectName": "\\ud800"}', b"\xff\xfe", b"[" * 10000]
)
async def test_malformed_bodies_are_4xx(live_server: LiveServer, raw: bytes) -> None:
    """Malformed JSON, a non-object, lone surrogates, invalid UTF-8 and deep nesting are all 4xx."""
    import aiohttp

    from tentacle.net.tls import client_context

    ctx = client_context(live_server.paths.config / "ca.pem")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            live_server.url + "/api/Default/deployments/create/untenanted/v1",
            data=raw,
            headers={"X-Api-Key": live_server.admin_key},
            ssl=ctx,
        ) as resp,
    ):
        assert 400 <= resp.status < 500
        assert "error" in await resp.json()
