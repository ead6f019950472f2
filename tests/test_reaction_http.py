"""Reactions with an HTTP action: a real server sending to a real aiohttp receiver on loopback.

Events come from real API calls (a release created is ``releaseCreated``); the receiver
(tests/receivers.py) records what arrives, and answers as each test scripts it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server_shim.store import sealing
from tests.conftest import LiveServer, eventually
from tests.deploying import apply, release
from tests.receivers import Receiver

SECRET = "hook-s3cret"
PROJECT = {
    "name": "Shop",
    "steps": [],
    "variables": [
        {"name": "Greeting", "value": 'say "hi"\nnow'},
        {"name": "Password", "value": "pa55word", "sensitive": True},
    ],
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver answering 200."""
    got = await Receiver().start()
    yield got
    await got.stop()


async def put_reaction(live: LiveServer, name: str, doc: dict[str, Any], status: int = 201) -> Any:
    """PUT a reaction; returns the answer."""
    got, answer = await live.api("PUT", f"/api/Default/reactions/{name}/v1", doc)
    assert got == status, answer
    return answer


def http_reaction(url: str, events: list[str], **http: Any) -> dict[str, Any]:
    """A reaction sending to ``url`` on ``events`` (loopback allowed: the receiver is there)."""
    return {
        "trigger": {"events": events},
        "action": {"http": {"url": url, "allowPrivateNetworks": True, **http}},
    }


async def deliveries(live: LiveServer, name: str) -> list[dict[str, Any]]:
    """The reaction's deliveries, newest first."""
    status, answer = await live.api("GET", f"/api/Default/reactions/{name}/deliveries/v1")
    assert status == 200, answer
    return list(answer["items"])


async def settled(live: LiveServer, name: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Wait until the reaction has ``count`` deliveries, none waiting; returns them, oldest first."""
    seen: list[dict[str, Any]] = []

    async def done() -> bool:
        seen[:] = await deliveries(live, name)
        return len(seen) == count and all(d["state"] != "pending" for d in seen)

    await eventually(done, timeout, what=lambda: seen)
    return list(reversed(seen))


async def test_body_headers_signature_and_order(live_server: LiveServer, receiver: Receiver) -> None:
    """Each event arrives once, in event order, templated (JSON-escaped, sensitive left as written),
    with the event kind, one delivery id per event, and an HMAC-SHA256 signature of the body."""
    await apply(live_server, PROJECT)
    body = '{"text": "#{Project.Name} #{Release.Version} #{Greeting}", "secret": "#{Password}"}'
    headers = {"X-Release": "#{Release.Version}"}
    doc = http_reaction(receiver.url + "/hook/#{Project.Name}", ["releaseCreated"], body=body, secret=SECRET)
    doc["action"]["http"]["headers"] = headers
    await put_reaction(live_server, "notify", doc)
    versions = [await release(live_server, "Shop", f"2.0.{n}") for n in range(5)]
    await eventually(lambda: len(receiver.got) == 5, 20, what=lambda: receiver.got)
    for version, got in zip(versions, receiver.got, strict=True):
        assert got.path == "/hook/Shop" and got.method == "POST"
        assert got.json() == {"text": f'Shop {version} say "hi"\nnow', "secret": "#{Password}"}
        assert got.headers["X-Tentacle-Event"] == "releaseCreated"
        assert got.headers["X-Release"] == version
        assert got.headers["Content-Type"] == "application/json"
        assert got.signed_by(SECRET)
    assert len(set(receiver.deliveries())) == 5
    history = await settled(live_server, "notify", 5)
    assert [d["deliveryId"] for d in history] == receiver.deliveries()
    first = history[0]
    assert (first["state"], first["status"], first["responseCode"], first["attempt"]) == (
        "succeeded",
    ) * 2 + (
        200,
        1,
    )
    assert first["duration"] >= 0 and first["time"] and first["error"] is None


async def test_default_body_is_the_event(live_server: LiveServer, receiver: Receiver) -> None:
    """Without a body template the event itself goes out as JSON, numbered as the events list shows it."""
    await apply(live_server, PROJECT)
    await put_reaction(live_server, "raw", http_reaction(receiver.url, ["releaseCreated"]))
    version = await release(live_server, "Shop")
    await eventually(lambda: len(receiver.got) == 1, 20)
    sent = receiver.got[0].json()
    status, page = await live_server.api("GET", "/api/Default/events/v1?kind=releaseCreated")
    assert status == 200
    assert sent == page["items"][-1]
    assert (sent["kind"], sent["projectName"], sent["releaseVersion"]) == ("releaseCreated", "Shop", version)
    assert "X-Tentacle-Signature" not in receiver.got[0].headers


async def test_secret_is_write_only(live_server: LiveServer, receiver: Receiver) -> None:
    """A GET never shows the secret; a PUT without it keeps it; ``secret: null`` removes it."""
    doc = http_reaction(receiver.url, ["releaseCreated"], secret=SECRET)
    await put_reaction(live_server, "signed", doc)
    status, shown = await live_server.api("GET", "/api/Default/reactions/signed/v1")
    assert status == 200
    listed = await live_server.api("GET", "/api/Default/reactions/v1")
    assert SECRET not in json.dumps(shown) + json.dumps(listed[1])
    assert shown["action"]["http"]["hasSecret"] is True and "secret" not in shown["action"]["http"]
    stored = await live_server.server.db.run(
        lambda conn: conn.execute("SELECT secret FROM reactions WHERE name = 'signed'").fetchone()[0]
    )
    assert SECRET not in stored and sealing.is_sealed(stored)  # sealed at rest, as variables are
    await put_reaction(live_server, "signed", http_reaction(receiver.url, ["releaseCreated"]), status=200)
    await apply(live_server, PROJECT)
    await release(live_server, "Shop")
    await eventually(lambda: len(receiver.got) == 1, 20)
    assert receiver.got[0].signed_by(SECRET)
    await put_reaction(
        live_server, "signed", http_reaction(receiver.url, ["releaseCreated"], secret=None), 200
    )
    await release(live_server, "Shop")
    await eventually(lambda: len(receiver.got) == 2, 20)
    assert "X-Tentacle-Signature" not in receiver.got[1].headers


async def test_503_then_200_retries_with_the_same_id_after_retry_after(live_server: LiveServer) -> None:
    """A 503 is retried after its Retry-After, with the same delivery id; the attempts are listed."""
    receiver = await Receiver(answers=[(503, {"Retry-After": "1"}), (200, {})]).start()
    try:
        await put_reaction(live_server, "flaky", http_reaction(receiver.url, ["projectUpdated"]))
        await apply(live_server, PROJECT)
        await eventually(lambda: len(receiver.got) == 2, 20, what=lambda: receiver.got)
        assert receiver.deliveries()[0] == receiver.deliveries()[1]
        assert receiver.got[1].at - receiver.got[0].at >= 0.95
        [delivery] = await settled(live_server, "flaky", 1)
        assert delivery["state"] == "succeeded" and delivery["attempt"] == 2
        first, second = delivery["attempts"]
        assert (first["status"], first["responseCode"], first["error"]) == (
            "retrying",
            503,
            "HTTP 503 Service Unavailable",
        )
        assert (second["status"], second["responseCode"]) == ("succeeded", 200)
    finally:
        await receiver.stop()


async def test_a_later_event_waits_for_the_earlier_one(live_server: LiveServer) -> None:
    """While one delivery is retried, the reaction's next one waits: the receiver sees event order."""
    receiver = await Receiver(answers=[(500, {"Retry-After": "0"})] * 3 + [(200, {})]).start()
    try:
        await apply(live_server, PROJECT)
        await put_reaction(live_server, "ordered", http_reaction(receiver.url, ["releaseCreated"]))
        first, second = await release(live_server, "Shop"), await release(live_server, "Shop")
        await eventually(lambda: len(receiver.got) == 5, 20, what=lambda: receiver.got)
        versions = [g.json()["releaseVersion"] for g in receiver.got]
        assert versions == [first] * 4 + [second]
    finally:
        await receiver.stop()


async def test_a_4xx_is_final_and_records_reaction_failed(
    live_server: LiveServer, receiver: Receiver
) -> None:
    """A 404 fails the delivery at once and records reactionFailed, which other reactions get
    and the failing reaction itself never does (even when it listens for reactionFailed)."""
    refusing = await Receiver(answers=[(404, {})]).start()
    try:
        await put_reaction(
            live_server, "broken", http_reaction(refusing.url, ["releaseCreated", "reactionFailed"])
        )
        await put_reaction(live_server, "alarm", http_reaction(receiver.url, ["reactionFailed"]))
        await apply(live_server, PROJECT)
        await release(live_server, "Shop")
        await eventually(lambda: len(receiver.got) == 1, 20)
        alarm = receiver.got[0].json()
        assert alarm["kind"] == "reactionFailed" and alarm["details"]["reaction"] == "broken"
        assert alarm["details"]["error"] == "HTTP 404 Not Found" and alarm["projectName"] == "Shop"
        [failed] = await settled(live_server, "broken", 1)
        assert (failed["state"], failed["attempt"], failed["responseCode"]) == ("failed", 1, 404)
        assert len(refusing.got) == 1
    finally:
        await refusing.stop()


async def test_a_failure_about_a_failure_triggers_nothing(live_server: LiveServer) -> None:
    """Two reactions that watch each other's failures, both failing, cannot loop."""
    refusing = await Receiver(answers=[(400, {})]).start()
    try:
        await put_reaction(
            live_server, "a", http_reaction(refusing.url, ["projectUpdated", "reactionFailed"])
        )
        await put_reaction(live_server, "b", http_reaction(refusing.url, ["reactionFailed"]))
        await apply(live_server, PROJECT)
        await settled(live_server, "b", 1)  # a's failure; b's failure is about a failure
        # b's failure was matched in the transaction that recorded it: a had its delivery by now.
        assert len(await settled(live_server, "a", 1)) == 1  # projectUpdated only
        status, page = await live_server.api("GET", "/api/Default/events/v1?kind=reactionFailed")
        assert status == 200
        assert [(e["details"]["reaction"], e["details"]["chain"]) for e in page["items"]] == [
            ("a", 0),
            ("b", 1),
        ]
        assert len(refusing.got) == 2
    finally:
        await refusing.stop()
