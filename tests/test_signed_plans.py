"""Signed plans (issue 15, item 11): a tentacle acts only on what the server's signing key signed.

Real processes in both modes: `server-shim run`, `tentacle run`. The attacker of these
tests holds the server's TLS certificate and key (a stolen session key, a proxy that
terminates TLS), so it can talk to a tentacle as the server does, but not the
signing key: listening tentacles are called on their port, polling ones are served by an
impostor on the server's polling port once the real server has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rigs.instances import wait_until
from tentacle.agent import agent_config
from tentacle.agent.signatures import PinFile
from tentacle.common.paths import resolve
from tentacle.net.tls import client_context, server_context
from tentacle.protocol import messages, signing
from tentacle.protocol.messages import Request, Response
from tentacle.protocol.plan import Plan, PlannedStep
from tentacle.protocol.process import Script
from tentacle.protocol.rpc_messages import StartParams, StopParams
from tests.real_fleet import RealFleet


class Injector:
    """Sends request envelopes to one tentacle with the server's TLS identity, and reads the answers."""

    def __init__(self, fleet: RealFleet, name: str, mode: str) -> None:
        self.fleet, self.name, self.mode = fleet, name, mode
        home = fleet.server.home
        self.client_ctx = client_context(home / "ca.pem", home / "server.pem", home / "server.key")
        self._socket: asyncio.Future[web.WebSocketResponse] | None = None
        self._answers: dict[str, asyncio.Future[Response]] = {}
        self._runner: web.AppRunner | None = None
        self._session = aiohttp.ClientSession()

    async def start(self) -> None:
        """Polling: stop the real server and serve its polling port with its certificate."""
        if self.mode != "polling":
            return
        self.fleet.server.stop()
        self._socket = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get("/poll/v1", self._poll)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        home = self.fleet.server.home
        ctx = server_context(home / "server.pem", home / "server.key", home / "ca.pem", require=True)
        await web.TCPSite(self._runner, "127.0.0.1", self.fleet.server.polling_port, ssl_context=ctx).start()
        await asyncio.wait_for(asyncio.shield(self._socket), 90)  # the tentacle's reconnect backoff

    async def _poll(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert self._socket is not None
        if not self._socket.done():
            self._socket.set_result(ws)
        async for message in ws:
            answer = messages.decode(message.data)
            if isinstance(answer, Response) and answer.id in self._answers:
                self._answers[answer.id].set_result(answer)
        return ws

    async def send(self, request: Request) -> Response:
        """One request, its response."""
        data = messages.encode(request)
        if self.mode == "listening":
            config = agent_config.load(resolve("tentacle", str(self.fleet.home(self.name))))
            url = f"https://127.0.0.1:{config.listen.port}/rpc/v1"
            async with self._session.post(url, data=data, ssl=self.client_ctx) as answer:
                decoded = messages.decode(await answer.read())
        else:
            assert self._socket is not None
            ws = await self._socket
            future = self._answers[request.id] = asyncio.get_running_loop().create_future()
            await ws.send_str(data.decode())
            decoded = await asyncio.wait_for(future, 30)
        assert isinstance(decoded, Response)
        return decoded

    async def close(self) -> None:
        await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def web_01(real_fleet: RealFleet, mode: str) -> AsyncIterator[Injector]:
    """web-01 registered in ``mode`` and running; an injector speaking to it as the server's TLS key can."""
    done = real_fleet.register("web-01", mode, real_fleet.server.cli("token", "create"))
    assert done.returncode == 0, done.stderr
    real_fleet.run_tentacle("web-01")
    real_fleet.wait_online("web-01")
    injector = Injector(real_fleet, "web-01", mode)
    await injector.start()
    yield injector
    await injector.close()


def _server_key(fleet: RealFleet) -> Ed25519PrivateKey:
    """The server's current signing key, read from its home (the attacker of these tests lacks it)."""
    state = fleet.server.home / "state" / "server.db"
    with contextlib.closing(sqlite3.connect(state)) as conn:
        (key_id,) = conn.execute("SELECT key_id FROM signing_keys WHERE current = 1").fetchone()
    key = serialization.load_pem_private_key(
        (fleet.server.home / "signing" / f"{key_id}.key").read_bytes(), None
    )
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _start(task_id: str, mark: Path) -> Request:
    plan = Plan(
        task_id=task_id,
        kind="runbook",
        project_name="Evil",
        release_version="",
        environment_name="Production",
        machine_name="web-01",
        steps=(PlannedStep(index=0, name="Evil", script=Script("bash", f"touch {mark}")),),
    )
    return Request.of(f"r-{task_id}", "task.start", StartParams(plan=plan))


def _signed(
    request: Request, key: Ed25519PrivateKey, machine: str = "web-01", at: float | None = None
) -> Request:
    signature = signing.sign(request.method.value, machine, request.params, key, at or time.time())
    return msgspec.structs.replace(request, signature=signature)


def _status(task_id: str) -> Request:
    return Request.of(f"s-{task_id}-{time.monotonic_ns()}", "task.status", {"taskId": task_id})


async def _task_state(injector: Injector, task_id: str) -> str:
    answer = await injector.send(_status(task_id))
    assert answer.error is None, answer.error
    return str(json.loads(bytes(answer.result))["state"])


async def test_a_tentacle_refuses_plans_and_cancels_the_signing_key_did_not_sign(
    web_01: Injector, real_fleet: RealFleet, tmp_path: Path
) -> None:
    """Unsigned, altered, foreign-key, other-machine and stale starts are refused and logged; signed runs."""
    mark, server_key = tmp_path / "ran", _server_key(real_fleet)
    attacker = Ed25519PrivateKey.generate()
    altered = _signed(_start("T-altered", mark), server_key)
    altered = msgspec.structs.replace(altered, params=_start("T-altered", tmp_path / "other").params)
    forged = {
        "T-unsigned": _start("T-unsigned", mark),
        "T-foreign": _signed(_start("T-foreign", mark), attacker),
        "T-altered": altered,
        "T-web02": _signed(_start("T-web02", mark), server_key, machine="web-02"),
        "T-stale": _signed(_start("T-stale", mark), server_key, at=time.time() - 2 * signing.MAX_AGE),
    }
    for task_id, request in forged.items():
        answer = await web_01.send(request)
        assert answer.error is not None and answer.error.code == "BadSignature", (task_id, answer)
        assert await _task_state(web_01, task_id) == "unknown-task"  # nothing was started
    assert not mark.exists()
    log = real_fleet.log("web-01")
    assert log.count("trust.bad_signature") >= len(forged)
    started = await web_01.send(_signed(_start("T-signed", mark), server_key))
    assert started.error is None, started.error
    cancel = Request.of("c-1", "task.cancel", StopParams(task_id="T-signed"))
    refused = await web_01.send(cancel)  # a forged cancel cannot stop work either
    assert refused.error is not None and refused.error.code == "BadSignature"
    assert await _task_state(web_01, "T-signed") in ("queued", "running")
    assert (await web_01.send(_signed(cancel, server_key))).error is None
    assert await _task_state(web_01, "T-signed") in ("cancelled", "done")


def _pinned(fleet: RealFleet, name: str) -> str:
    """The signing key the tentacle holds to: registration's, or the one a rotation pinned since."""
    paths = resolve("tentacle", str(fleet.home(name)))
    return PinFile(paths.state, agent_config.load(paths).server.signing_key).pinned()


def _status_of(fleet: RealFleet) -> dict[str, Any]:
    answer: dict[str, Any] = fleet.server.call("GET", "/api/signing-keys/v1")
    return answer


@pytest.mark.slow
def test_rotation_hands_the_new_key_to_every_tentacle_over_the_old_one(
    real_fleet: RealFleet, mode: str
) -> None:
    """Online tentacles pin the new key at once, an offline one when it returns; then the old key goes."""
    for name in ("web-01", "web-02"):
        assert real_fleet.register(name, mode, real_fleet.server.cli("token", "create")).returncode == 0
    real_fleet.run_tentacle("web-01")
    real_fleet.wait_online("web-01")
    old = _status_of(real_fleet)["publicKey"]
    assert _pinned(real_fleet, "web-01") == old == _pinned(real_fleet, "web-02")
    new_id = real_fleet.api_cli("signing-key", "rotate")
    new = _status_of(real_fleet)["publicKey"]
    assert signing.key_id(new) == new_id != signing.key_id(old)
    wait_until(lambda: _pinned(real_fleet, "web-01") == new, 30, what="web-01 pins the new key")
    status = _status_of(real_fleet)
    assert [p["name"] for p in status["pending"]] == ["web-02"]  # offline: still on the old key
    assert (real_fleet.server.home / "signing" / f"{signing.key_id(old)}.key").exists()
    assert "trust.key_pinned" in real_fleet.log("web-01")
    project = {
        "name": "After",
        "steps": [{"name": "S", "roles": ["web"], "script": {"syntax": "bash", "body": "true"}}],
    }
    real_fleet.server.call("PUT", "/api/Default/projects/After/v1", project)
    real_fleet.server.call(
        "POST", "/api/Default/releases/create/v1", {"projectName": "After", "releaseVersion": "1.0.0"}
    )
    body = {
        "projectName": "After",
        "releaseVersion": "1.0.0",
        "environmentNames": ["Production"],
        "machineNames": ["web-01"],
    }
    task_id = real_fleet.server.call("POST", "/api/Default/deployments/create/untenanted/v1", body)["taskId"]
    assert real_fleet.wait_task(task_id)["state"] == "success"  # signed with the new key, accepted
    real_fleet.run_tentacle("web-02")
    wait_until(lambda: _pinned(real_fleet, "web-02") == new, 60, what="web-02 pins the new key once back")
    wait_until(lambda: len(_status_of(real_fleet)["keys"]) == 1, 30, what="the old key retired")
    assert not (real_fleet.server.home / "signing" / f"{signing.key_id(old)}.key").exists()
    assert _status_of(real_fleet)["pending"] == []


async def test_a_rotated_tentacle_refuses_the_old_key(
    web_01: Injector, real_fleet: RealFleet, tmp_path: Path
) -> None:
    """After the hand-over, a request signed by the previous key is refused as another key's."""
    old_key = _server_key(real_fleet)
    if web_01.mode == "polling":  # the impostor holds the polling port: hand the new key over by hand
        new_key = Ed25519PrivateKey.generate()
        public = signing.public_text(new_key.public_key())
        rotate = Request.of("rot", "trust.rotate", {"keyId": signing.key_id(public), "publicKey": public})
        assert (await web_01.send(_signed(rotate, old_key))).error is None
    else:
        real_fleet.api_cli("signing-key", "rotate")
        new = _status_of(real_fleet)["publicKey"]
        wait_until(lambda: _pinned(real_fleet, "web-01") == new, 30, what="web-01 pins the new key")
    answer = await web_01.send(_signed(_start("T-old-key", tmp_path / "ran"), old_key))
    assert answer.error is not None and "not by the pinned key" in answer.error.message
    forged_rotate = Request.of(
        "rot2",
        "trust.rotate",
        {
            "keyId": signing.key_id(signing.public_text(old_key.public_key())),
            "publicKey": signing.public_text(old_key.public_key()),
        },
    )
    back = await web_01.send(_signed(forged_rotate, old_key))  # the old key cannot take the pin back
    assert back.error is not None and back.error.code == "BadSignature"


@pytest.mark.slow
def test_a_tentacle_registered_before_signing_learns_the_key_and_keeps_working(
    real_fleet: RealFleet, mode: str
) -> None:
    """No pinned key: it warns once, takes the server's key on first contact, then deploys signed."""
    assert real_fleet.register("web-01", mode, real_fleet.server.cli("token", "create")).returncode == 0
    real_fleet.server.stop()
    paths = resolve("tentacle", str(real_fleet.home("web-01")))
    config = agent_config.load(paths)
    agent_config.save(
        paths,
        config.with_changes(
            server=config.server.__class__(
                url=config.server.url,
                polling_url=config.server.polling_url,
                thumbprints=config.server.thumbprints,
            )
        ),
    )
    with contextlib.closing(sqlite3.connect(real_fleet.server.home / "state" / "server.db")) as conn, conn:
        conn.execute("DELETE FROM machine_keys")
    assert _pinned(real_fleet, "web-01") == ""
    real_fleet.server.start()
    real_fleet.run_tentacle("web-01")
    real_fleet.wait_online("web-01")
    current = _status_of(real_fleet)["publicKey"]
    wait_until(lambda: _pinned(real_fleet, "web-01") == current, 30, what="the legacy tentacle pins the key")
    log = real_fleet.log("web-01")
    assert log.count("trust.unsigned_accepted") == 1 and "trust.key_pinned" in log
    task_id = real_fleet.deploy(
        {
            "name": "Legacy",
            "steps": [{"name": "S", "roles": ["web"], "script": {"syntax": "bash", "body": "true"}}],
        }
    )
    assert real_fleet.wait_task(task_id)["state"] == "success"
    assert _status_of(real_fleet)["pending"] == []
