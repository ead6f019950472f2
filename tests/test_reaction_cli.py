"""`server-shim reaction apply | list | deliveries | fire | delete` and `events`: one request each."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tentacle.common.paths import InstancePaths
from tests.conftest import CountingServer, LiveServer, shim_command, start_server, stop_server
from tests.receivers import Receiver
from tests.test_reaction_http import settled


@pytest.fixture
async def counted(server_home: InstancePaths) -> AsyncIterator[LiveServer]:
    """A live server whose API requests are counted."""
    live = await start_server(server_home, kind=CountingServer)
    yield live
    await stop_server(live)


def _count(live: LiveServer) -> int:
    server = live.server
    assert isinstance(server, CountingServer)
    return len(server.requests)


async def _one_request(live: LiveServer, *args: str) -> str:
    before = _count(live)
    code, out = await shim_command(live, *args)
    assert code == 0, (args, out)
    assert _count(live) - before == 1, args
    return out


async def test_apply_list_fire_deliveries_delete(counted: LiveServer, tmp_path: Path) -> None:
    """A reaction applied from a file is listed, fired (its delivery id alone on stdout), shows its
    delivery as a table row and as JSON, and is deleted; events lists what happened."""
    receiver = await Receiver().start()
    try:
        doc = {
            "name": "chat",
            "trigger": {"events": ["deploymentSucceeded"], "environments": ["Production"]},
            "action": {"http": {"url": receiver.url + "/chat", "secret": "s", "allowPrivateNetworks": True}},
        }
        (tmp_path / "chat.json").write_text(json.dumps(doc))
        out = await _one_request(counted, "reaction", "apply", str(tmp_path / "chat.json"))
        assert out.strip() == (
            f"applied reaction 'chat': on deploymentSucceeded (environments=Production)"
            f" -> http POST {receiver.url}/chat (signed)"
        )
        listed = await _one_request(counted, "reaction", "list")
        assert listed.startswith("chat ") and "(signed)" in listed
        delivery_id = (await _one_request(counted, "reaction", "fire", "chat")).strip()
        await settled(counted, "chat", 1)
        table = (await _one_request(counted, "reaction", "deliveries", "chat")).splitlines()
        assert table[0].split()[:7] == ["TIME", "DELIVERY", "EVENT", "ATTEMPT", "STATUS", "CODE", "SECONDS"]
        assert table[1].split()[1:6] == [delivery_id, "deploymentSucceeded", "1", "succeeded", "200"]
        [shown] = json.loads(await _one_request(counted, "reaction", "deliveries", "chat", "--json"))
        assert (
            shown["deliveryId"] == delivery_id
            and receiver.got[0].headers["X-Tentacle-Delivery"] == delivery_id
        )
        events = await _one_request(counted, "events", "--json")
        assert [e["kind"] for e in json.loads(events)["items"]] == []
        assert "deleted reaction 'chat'" in await _one_request(counted, "reaction", "delete", "chat")
        assert (await _one_request(counted, "reaction", "list")).strip() == ""
    finally:
        await receiver.stop()


async def test_apply_reports_what_is_wrong(
    counted: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A document the server refuses exits 1 and names the path of the problem."""
    bad = {
        "name": "x",
        "trigger": {"events": ["deploymentExploded"]},
        "action": {"script": {"syntax": "bash", "body": "true"}},
    }
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    code, _ = await shim_command(counted, "reaction", "apply", str(tmp_path / "bad.json"))
    assert code == 1
    err = capsys.readouterr().err
    assert "trigger.events[0]: expected deploymentCancelled," in err, err
    assert "got 'deploymentExploded'" in err
