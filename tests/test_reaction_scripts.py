"""Script actions and webhooks: real scripts run by a real server, calling its API back.

A webhook's script creates a release and deploys it with the `server-shim` commands and the
short-lived key it is given; other scripts show what they see (stdin, environment), what
their output becomes (masked, in the delivery's log), and what a time limit does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server_shim import server_config
from tentacle.net.tls import client_context
from tests.conftest import LiveServer, Tentacles, eventually
from tests.deploying import apply, step, wait_task
from tests.test_reaction_http import put_reaction, settled

RELEASE_AND_DEPLOY = """
set -eu
version=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["details"]["body"]["version"])')
server-shim release create --project "$TENTACLE_WEBHOOK_QUERY_PROJECT" --version "$version"
server-shim deploy --project "$TENTACLE_WEBHOOK_QUERY_PROJECT" --version "$version" --environment Dev
echo "key was $SERVER_SHIM_API_KEY"
"""


def script_reaction(body: str, *, syntax: str = "bash", webhook: bool = True, **extra: Any) -> dict[str, Any]:
    """A reaction running ``body`` on a webhook (or on releaseCreated)."""
    trigger: dict[str, Any] = {"webhook": True} if webhook else {"events": ["releaseCreated"]}
    return {"trigger": trigger, "action": {"script": {"syntax": syntax, "body": body, **extra}}}


async def call_hook(
    live: LiveServer, name: str, body: bytes, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST a webhook as a sender would (no client certificate, the key where ``headers`` put it)."""
    ca = live.paths.config / server_config.CA_CERT
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{live.url}/api/Default/hooks/{name}/v1{query}",
            data=body,
            headers={"X-Api-Key": live.admin_key} if headers is None else headers,
            ssl=client_context(ca),
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_a_webhook_script_creates_a_release_and_deploys_it(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """One webhook call: its script creates the release named in the body and deploys it (one task,
    which succeeds); the key it was given is masked in the delivery's log."""
    await tentacles.bring_online("polling", {"web-1": ("web",)})
    await apply(
        live_server, {"name": "Shop", "steps": [step("Hello", "echo deployed $TENTACLE_RELEASE_VERSION")]}
    )
    await put_reaction(live_server, "ci", script_reaction(RELEASE_AND_DEPLOY))
    status, queued = await call_hook(live_server, "ci", b'{"version": "3.1.4"}', "?project=Shop")
    assert status == 202, queued
    [delivery] = await settled(live_server, "ci", 1, timeout=60)
    assert delivery["state"] == "succeeded", delivery
    assert delivery["deliveryId"] == queued["deliveryId"]
    log = delivery["attempts"][0]["log"]
    assert "key was ********" in log and "API-R-" not in log
    status, page = await live_server.api("GET", "/api/Default/events/v1?kind=deploymentQueued")
    [queued_event] = page["items"]
    assert queued_event["releaseVersion"] == "3.1.4"
    done = await wait_task(live_server, queued_event["taskId"])
    assert done["state"] == "success"


async def test_the_script_sees_the_event_on_stdin_and_in_its_environment(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """stdin holds the event as JSON; the environment names it and the webhook's query (not the key)."""
    out = tmp_path / "seen.json"
    body = f"""
import json, os, sys
event = json.load(sys.stdin)
seen = {{k: v for k, v in os.environ.items() if k.startswith(("TENTACLE_", "SERVER_SHIM_"))}}
json.dump({{"stdin": event, "env": seen}}, open({str(out)!r}, "w"))
"""
    await put_reaction(live_server, "probe", script_reaction(body, syntax="python3"))
    key = live_server.admin_key
    status, _ = await call_hook(
        live_server, "probe", b'{"ref": "main"}', f"?branch=dev&apiKey={key}", headers={}
    )
    assert status == 202
    await settled(live_server, "probe", 1)
    seen = json.loads(out.read_text())
    stdin, env = seen["stdin"], seen["env"]
    assert stdin["kind"] == "webhook" and stdin["details"] == {
        "hook": "probe",
        "body": {"ref": "main"},
        "query": {"branch": "dev"},
    }
    assert env["TENTACLE_EVENT_KIND"] == "webhook" and env["TENTACLE_WEBHOOK_QUERY_BRANCH"] == "dev"
    assert json.loads(env["TENTACLE_WEBHOOK_BODY"]) == {"ref": "main"}
    assert env["SERVER_SHIM_URL"] == live_server.url and env["SERVER_SHIM_SPACE"] == "Default"
    assert env["SERVER_SHIM_API_KEY"].startswith("API-R-") and key not in json.dumps(seen)
    assert Path(env["SERVER_SHIM_CA"]).read_text().startswith("-----BEGIN CERTIFICATE")


async def test_the_script_key_opens_its_space_only_and_dies_with_the_script(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The key works in the reaction's space (reading reactions, not changing them), is refused in
    another (403), and not at all afterwards."""
    status, _ = await live_server.api("POST", "/api/spaces/v1", {"name": "Other"})
    keep = tmp_path / "key"
    body = f"""
code() {{
  curl -s -o /dev/null -w '%{{http_code}}' --cacert "$SERVER_SHIM_CA" \
    -H "X-Api-Key: $SERVER_SHIM_API_KEY" "$SERVER_SHIM_URL$1" "${{@:2}}"
}}
echo "own=$(code /api/Default/machines/v1) other=$(code /api/Other/machines/v1) spaces=$(code /api/spaces/v1)"
echo "reactions=$(code /api/Default/reactions/v1) delete=$(code /api/Default/reactions/keyed/v1 -X DELETE)"
printf %s "$SERVER_SHIM_API_KEY" > {keep}
"""
    await put_reaction(live_server, "keyed", script_reaction(body))
    status, _ = await call_hook(live_server, "keyed", b"")
    [delivery] = await settled(live_server, "keyed", 1)
    log = delivery["attempts"][0]["log"]
    assert "own=200 other=403 spaces=403" in log and "reactions=200 delete=403" in log, delivery
    status, answer = await live_server.api("GET", "/api/Default/machines/v1", key=keep.read_text())
    assert status == 401, answer


async def test_a_script_past_its_time_limit_is_killed_with_its_children(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """At the time limit the script's whole process group is killed; the delivery fails saying so."""
    pid_file = tmp_path / "child.pid"
    body = f"sleep 300 & echo $! > {pid_file}; echo started; sleep 300"
    await put_reaction(live_server, "stuck", script_reaction(body, timeoutSeconds=1))
    await call_hook(live_server, "stuck", b"{}")
    [delivery] = await settled(live_server, "stuck", 1)
    assert delivery["state"] == "failed" and delivery["error"] == "timed out after 1 s (killed)"
    assert "started" in delivery["attempts"][0]["log"]
    child = int(pid_file.read_text())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"  # a zombie awaiting its reaper

    await eventually(gone, 10)


async def test_a_failing_script_fails_its_delivery_once(live_server: LiveServer) -> None:
    """A script that exits non-zero is not run again: the delivery fails with the exit code."""
    await put_reaction(live_server, "bad", script_reaction("echo nope; exit 4"))
    await call_hook(live_server, "bad", b"{}")
    [delivery] = await settled(live_server, "bad", 1)
    assert (delivery["state"], delivery["error"], delivery["attempt"]) == ("failed", "exit code 4", 1)
    assert delivery["attempts"][0]["log"].strip() == "nope"


@pytest.mark.parametrize(
    ("name", "body", "query", "headers", "status", "code"),
    [
        ("ci", b"{}", "", {}, 401, "unauthorized"),
        ("ci", b"{}", "?apiKey=API-wrong", {}, 401, "unauthorized"),
        ("nobody", b"{}", "", None, 404, "hook-not-found"),
        ("notify", b"{}", "", None, 404, "hook-not-found"),
        ("ci", b"version=1", "", None, 400, "bad-json"),
        ("ci", b'{"a": "' + b"x" * (1024 * 1024) + b'"}', "", None, 413, "too-large"),
    ],
)
async def test_webhook_refusals(
    live_server: LiveServer,
    name: str,
    body: bytes,
    query: str,
    headers: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    """No key or a wrong one (401), an unknown hook or a reaction without a webhook trigger (404),
    a body that is not JSON (400) or is over 1 MiB (413)."""
    await put_reaction(live_server, "ci", script_reaction("true"))
    await put_reaction(live_server, "notify", script_reaction("true", webhook=False))
    got, answer = await call_hook(live_server, name, body, query, headers)
    assert (got, answer["error"]["code"]) == (status, code), answer


async def test_a_webhook_with_an_http_action_is_refused(live_server: LiveServer) -> None:
    """The server would only relay: a webhook trigger with an http action is a 400 naming the path."""
    doc = {"trigger": {"webhook": True}, "action": {"http": {"url": "https://example.com/"}}}
    status, answer = await live_server.api("PUT", "/api/Default/reactions/relay/v1", doc)
    assert status == 400 and answer["error"]["details"]["path"] == "action.http", answer
