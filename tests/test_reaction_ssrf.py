"""Where an HTTP reaction may send: private addresses refused, redirects kept on their host,
timeouts and refused connections retried for the reaction's window. A real server and real
receivers on loopback; the resolver is given by the test only where DNS answers are the point.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from aiohttp.abc import ResolveResult

from server_shim.dispatch.outgoing_http import HttpSender
from server_shim.store.delivery_rows import Due
from tentacle.protocol.reactions import Event, parse_reaction
from tests.conftest import LiveServer, eventually
from tests.receivers import Receiver
from tests.test_reaction_http import http_reaction, put_reaction, settled


async def fire(live: LiveServer, name: str) -> str:
    """`reaction fire`: a test event for the reaction; the delivery id."""
    status, answer = await live.api("POST", f"/api/Default/reactions/{name}/fire/v1")
    assert status == 202, answer
    return str(answer["deliveryId"])


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("10.1.2.3", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "not a unicast"),
        ("2130706433", "not a canonical IPv4"),
    ],
)
async def test_private_addresses_are_refused(live_server: LiveServer, host: str, why: str) -> None:
    """Without allowPrivateNetworks, loopback, private and link-local addresses (also as names,
    IPv4-mapped IPv6, or a decimal IPv4) are refused without a connection; the failure is final."""
    receiver = await Receiver().start()
    try:
        url = f"http://{host}:{receiver.port}/hook"
        doc = {"trigger": {"events": ["releaseCreated"]}, "action": {"http": {"url": url}}}
        await put_reaction(live_server, "outside", doc)
        await fire(live_server, "outside")
        [delivery] = await settled(live_server, "outside", 1)
        assert delivery["state"] == "failed" and why in delivery["error"], delivery
        assert delivery["responseCode"] is None and receiver.got == []
    finally:
        await receiver.stop()


async def test_allow_private_networks_reaches_loopback(live_server: LiveServer) -> None:
    """The same loopback URL is reached when the reaction allows private networks."""
    receiver = await Receiver().start()
    try:
        await put_reaction(
            live_server, "inside", http_reaction(f"http://localhost:{receiver.port}/", ["releaseCreated"])
        )
        delivery_id = await fire(live_server, "inside")
        await eventually(lambda: len(receiver.got) == 1, 20)
        assert receiver.got[0].headers["X-Tentacle-Delivery"] == delivery_id
        assert receiver.got[0].json()["details"] == {"test": True}
    finally:
        await receiver.stop()


async def test_redirects_stay_on_their_host(live_server: LiveServer) -> None:
    """A redirect on the same host is followed; one to another host is not, and fails the delivery."""
    elsewhere = await Receiver().start()
    receiver = await Receiver(
        answers=[(307, {"Location": "/moved"}), (302, {"Location": f"http://localhost:{elsewhere.port}/x"})]
    ).start()
    try:
        await put_reaction(live_server, "hop", http_reaction(receiver.url + "/start", ["releaseCreated"]))
        await fire(live_server, "hop")
        [delivery] = await settled(live_server, "hop", 1)
        assert [g.path for g in receiver.got] == ["/start", "/moved"]
        assert receiver.got[1].method == "POST" and receiver.got[1].body == receiver.got[0].body
        assert delivery["state"] == "failed" and delivery["responseCode"] == 302
        assert "another host not followed" in delivery["error"] and elsewhere.got == []
    finally:
        await receiver.stop()
        await elsewhere.stop()


async def test_a_timeout_is_retried_within_the_window(live_server: LiveServer) -> None:
    """A receiver slower than timeoutSeconds times out; the attempt is retried while the window lasts."""
    receiver = await Receiver(hold=5.0).start()
    try:
        doc = http_reaction(receiver.url, ["releaseCreated"], timeoutSeconds=1, retryForSeconds=0)
        await put_reaction(live_server, "slow", doc)
        await fire(live_server, "slow")
        [delivery] = await settled(live_server, "slow", 1)
        assert (delivery["state"], delivery["error"], delivery["attempt"]) == ("failed", "timed out", 1)
        assert 0.9 < delivery["duration"] < 4
    finally:
        await receiver.stop()


async def test_refused_connections_are_retried_with_backoff(live_server: LiveServer, dead_port: int) -> None:
    """Connection refused is retried with growing, jittered delays until the window closes."""
    doc = http_reaction(f"http://127.0.0.1:{dead_port}/", ["releaseCreated"], retryForSeconds=4)
    await put_reaction(live_server, "down", doc)
    await fire(live_server, "down")
    [delivery] = await settled(live_server, "down", 1, timeout=30)
    attempts = delivery["attempts"]
    assert delivery["state"] == "failed" and len(attempts) >= 2
    assert {a["error"] for a in attempts} == {"connection refused"}
    assert [a["status"] for a in attempts] == ["retrying"] * (len(attempts) - 1) + ["failed"]


def _due(url: str) -> Due:
    doc = parse_reaction(http_reaction(url, ["releaseCreated"]), "probe")
    payload = Event(seq=1, kind="releaseCreated", time="2026-12-01T00:00:00.000Z", space="Default")
    return Due("d-1", "Default", "probe", doc, None, payload, 1, time.time())


async def test_every_address_of_a_name_is_checked() -> None:
    """A name is refused when any one of its addresses is private, even if another is public."""
    calls: list[str] = []

    async def lookup(host: str, port: int, family: socket.AddressFamily) -> list[ResolveResult]:
        calls.append(host)
        return [_result(host, "93.184.216.34", port), _result(host, "10.0.0.7", port)]

    sender = HttpSender(lookup)
    try:
        doc = _due("http://mixed.example/")
        http = doc.document.action.http
        assert http is not None
        attempt = await sender.send(doc, _no_private(http), [])
        assert attempt.status == "failed" and "10.0.0.7 is a private" in (attempt.error or "")
        assert [host.rstrip(".") for host in calls] == ["mixed.example"]
    finally:
        await sender.close()


async def test_the_connection_goes_to_the_address_checked() -> None:
    """A name is looked up once per connection and the checked address is the one connected to:
    a second answer (DNS rebinding) is never asked for."""
    receiver = await Receiver().start()
    answers = ["127.0.0.1", "10.9.9.9"]

    async def lookup(host: str, port: int, family: socket.AddressFamily) -> list[ResolveResult]:
        return [_result(host, answers.pop(0), port)]

    sender = HttpSender(lookup)
    try:
        due = _due(f"http://rebind.example:{receiver.port}/")
        http = due.document.action.http
        assert http is not None
        attempt = await sender.send(due, http, [])
        assert (attempt.status, attempt.response_code) == ("succeeded", 200)
        assert answers == ["10.9.9.9"] and len(receiver.got) == 1
    finally:
        await sender.close()
        await receiver.stop()


def _result(host: str, address: str, port: int) -> ResolveResult:
    return ResolveResult(hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=0)


def _no_private(http: Any) -> Any:
    import msgspec

    return msgspec.structs.replace(http, allow_private_networks=False)


async def test_a_request_that_cannot_be_made_fails_once(live_server: LiveServer) -> None:
    """A URL or header that its filled-in values break fails the delivery at once, saying why."""
    doc = http_reaction(
        "http://#{Project.Name}:99999/", ["projectUpdated"], headers={"X-Who": "#{Project.Name}"}
    )
    await put_reaction(live_server, "broken", doc)
    status, _ = await live_server.api(
        "PUT", "/api/Default/projects/Sh%C3%B6p/v1", {"name": "Shöp", "steps": []}
    )
    assert status == 201
    [delivery] = await settled(live_server, "broken", 1)
    assert delivery["state"] == "failed" and delivery["attempt"] == 1, delivery
    assert delivery["error"] == "url: invalid: http://Sh%C3%B6p:99999/"
