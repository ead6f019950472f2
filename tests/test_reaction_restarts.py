"""The outbox across kill -9: real `server-shim run` processes, a real receiver in this one.

A delivery is sent at least once and always with the same id: a server killed between
retries, or in the middle of an attempt, sends it after it starts again; one whose 2xx was
recorded is never sent again.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rigs.instances import Server
from tests.conftest import eventually
from tests.receivers import Receiver


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """An initialised server instance (not started); stopped at the end."""
    instance = Server(tmp_path / "server")
    instance.init()
    yield instance
    instance.stop()


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kill_9(server: Server) -> None:
    """SIGKILL the server and reap it: no shutdown of any kind."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    server.proc = None


async def call(server: Server, method: str, path: str, body: Any = None) -> Any:
    """An admin API call that must succeed (off the loop: the rig's client blocks)."""
    return await asyncio.to_thread(server.call, method, path, body, (200, 201, 202))


async def deliveries(server: Server, name: str) -> list[dict[str, Any]]:
    """The reaction's deliveries, oldest first."""
    answer = await call(server, "GET", f"/api/Default/reactions/{name}/deliveries/v1")
    return list(reversed(answer["items"]))


async def setup(server: Server, port: int) -> None:
    """Start the server, add a reaction to the receiver's port on projectUpdated, make one event."""
    await asyncio.to_thread(server.start)
    reaction = {
        "trigger": {"events": ["projectUpdated"]},
        "action": {"http": {"url": f"http://127.0.0.1:{port}/hook", "allowPrivateNetworks": True}},
    }
    await call(server, "PUT", "/api/Default/reactions/watch/v1", reaction)
    await call(server, "PUT", "/api/Default/projects/Shop/v1", {"name": "Shop", "steps": []})


async def test_a_receiver_down_across_a_kill_9_gets_the_delivery_after_restart(server: Server) -> None:
    """Refused while the receiver is down, retried; the server is killed between retries; after its
    restart the receiver (up now) gets the delivery with the id of the attempts before, once."""
    port = free_port()
    await setup(server, port)
    seen: list[dict[str, Any]] = []

    async def retried() -> bool:
        seen[:] = await deliveries(server, "watch")
        return bool(seen) and len(seen[0]["attempts"]) >= 2

    await eventually(retried, 30, what=lambda: seen)
    delivery_id = seen[0]["deliveryId"]
    assert {a["error"] for a in seen[0]["attempts"]} == {"connection refused"}
    kill_9(server)
    receiver = await Receiver().start(port)
    try:
        await asyncio.to_thread(server.start)
        await eventually(lambda: len(receiver.got) == 1, 30)
        assert receiver.deliveries() == [delivery_id]
        await asyncio.to_thread(server.stop)  # a clean restart: nothing is sent again
        await asyncio.to_thread(server.start)
        await call(server, "PUT", "/api/Default/projects/Shop/v1", {"name": "Shop", "steps": []})
        # Deliveries of a reaction keep event order: had the first been sent again, it would come first.
        await eventually(lambda: len(receiver.got) == 2, 30)
        assert receiver.deliveries()[0] == delivery_id and receiver.deliveries()[1] != delivery_id
        done = await deliveries(server, "watch")
        assert [d["state"] for d in done] == ["succeeded", "succeeded"]
    finally:
        await receiver.stop()


async def test_a_server_killed_mid_attempt_sends_again_with_the_same_id(server: Server) -> None:
    """The receiver holds the request; the server dies before the answer; after its restart the
    same delivery (same id) is sent again and, answered, recorded as succeeded."""
    port = free_port()
    receiver = await Receiver(hold=60.0).start(port)
    try:
        await setup(server, port)
        await eventually(lambda: len(receiver.got) == 1, 30)
        kill_9(server)
        receiver.hold = 0.0
        await asyncio.to_thread(server.start)
        await eventually(lambda: len(receiver.got) == 2, 30)
        first, again = receiver.deliveries()
        assert first == again
        assert receiver.got[0].body == receiver.got[1].body
        seen: list[dict[str, Any]] = []

        async def recorded() -> bool:
            seen[:] = await deliveries(server, "watch")
            return bool(seen) and seen[0]["state"] == "succeeded"

        await eventually(recorded, 30, what=lambda: seen)
        assert seen[0]["deliveryId"] == first and seen[0]["attempt"] == 1
    finally:
        await receiver.stop()
