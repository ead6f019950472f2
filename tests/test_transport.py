"""Registration, presence and calls over both transports, on real mutual TLS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from server_shim.dispatch.links import ListeningLink, PollingLink
from server_shim.store import machine_rows as machines
from tentacle.common.paths import InstancePaths
from tentacle.protocol import messages
from tentacle.protocol.messages import Method, Response
from tentacle.protocol.rpc_messages import (
    PING,
    TASK_STATUS,
    LogLine,
    LogStream,
    NoParams,
    StatusParams,
    StatusResult,
)
from tests.conftest import LiveServer, Tentacles, eventually, start_server, stop_server
from tests.deploying import apply, deploy, release, step, wait_task


async def _status(live: LiveServer, name: str) -> str:
    return str((await live.machines())[name]["status"])


async def test_registered_machine_is_listed_with_its_details(
    live_server: LiveServer, tentacles: Tentacles, mode: str
) -> None:
    """Registration records name, thumbprint, mode, endpoint, roles and environments."""
    paths = await tentacles.register("web-01", mode, roles=("web", "api"), environment="Staging")
    entry = (await live_server.machines())["web-01"]
    from tentacle.agent import agent_config as config
    from tentacle.net import pki

    cert = pki.load_cert(config.file(paths, config.CERT_FILE))
    assert entry["thumbprint"] == pki.cert_thumbprint(cert)
    assert entry["mode"] == mode
    assert entry["roles"] == ["web", "api"] and entry["environments"] == ["Staging"]
    assert (entry["endpoint"] or "").startswith("https://127.0.0.1:") == (mode == "listening")
    assert entry["status"] == "offline" and entry["lastSeen"] is None


async def test_tentacle_goes_online_and_offline(
    live_server: LiveServer, tentacles: Tentacles, mode: str
) -> None:
    """A started tentacle shows online within 10 s and offline within 20 s of stopping."""
    await tentacles.register("web-01", mode)
    await tentacles.start("web-01")

    async def online() -> bool:
        return await _status(live_server, "web-01") == "online"

    await eventually(online, 10)
    assert (await live_server.machines())["web-01"]["lastSeen"] is not None
    await tentacles.stop("web-01")

    async def offline() -> bool:
        return await _status(live_server, "web-01") == "offline"

    await eventually(offline, 20)


async def test_server_calls_tentacle_with_the_same_messages(
    live_server: LiveServer, tentacles: Tentacles, mode: str
) -> None:
    """The server's ping reaches the tentacle and returns its answer, whatever the mode."""
    await tentacles.register("db-01", mode, roles=("db",))
    await tentacles.start("db-01")
    fleet = live_server.server.fleet
    await eventually(lambda: live_server.online("db-01"), 10)
    machine = live_server.server.db.sync(machines.find, "Default", "db-01")
    assert machine is not None
    answer = await fleet.call(machine, PING, NoParams(), timeout=5)
    assert (answer.name, answer.mode) == ("db-01", mode)


async def test_polling_tentacle_reconnects_after_server_restart(server_home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A polling tentacle comes back online by itself when the server restarts on the same ports."""
    live = await start_server(server_home)
    ports = (live.server.bound.api, live.server.bound.polling)
    fleet = Tentacles(live, tmp_path / "t")
    await fleet.register("web-01", "polling")
    await fleet.start("web-01")
    await eventually(lambda: live.online("web-01"), 10)
    await stop_server(live)
    await asyncio.sleep(0.5)
    live = await start_server(server_home, *ports)
    fleet.server = live
    try:
        took = await eventually(lambda: live.online("web-01"), 15)
        assert took < 15
    finally:
        await fleet.stop_all()
        await stop_server(live)


@pytest.mark.parametrize("count", [2])
async def test_many_tentacles_in_both_modes_at_once(
    live_server: LiveServer, tentacles: Tentacles, count: int
) -> None:
    """Listening and polling tentacles coexist on one server, all online."""
    names = [f"{mode}-{i}" for mode in ("listening", "polling") for i in range(count)]
    for name in names:
        await tentacles.register(name, name.split("-")[0])
        await tentacles.start(name)

    async def all_online() -> bool:
        listed = await live_server.machines()
        return all(listed[n]["status"] == "online" for n in names)

    await eventually(all_online, 10)


# --- the typed contract on the real transports ------------------------------------------


async def _raw_call(live: LiveServer, name: str, data: bytes) -> Response:
    """Send raw request bytes to a tentacle down the server's own link; its response."""
    machine = live.server.db.sync(machines.find, "Default", name)
    assert machine is not None
    link = live.server.fleet.link(machine)
    if isinstance(link, PollingLink):
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        link.pending["raw-1"] = (future, Method.PING)  # what it waits for; its limit is the smallest
        await link.ws.send_str(data.decode())
        return await asyncio.wait_for(future, 5)
    assert isinstance(link, ListeningLink)
    async with link.session.post(link.url, data=data, ssl=link.ctx) as answer:
        assert answer.status == 200
        decoded = messages.decode(await answer.read())
    assert isinstance(decoded, Response)
    return decoded


async def test_a_refused_request_is_answered_with_the_path(
    live_server: LiveServer, tentacles: Tentacles, mode: str
) -> None:
    """An unknown method or out-of-range params get an error response naming the path, at once."""
    await tentacles.register("web-01", mode)
    await tentacles.start("web-01")
    await eventually(lambda: live_server.online("web-01"), 10)
    unknown = b'{"kind":"request","id":"raw-1","method":"task.explode","params":{}}'
    assert await _raw_call(live_server, "web-01", unknown) == Response.failure(
        "raw-1", "unknown-method", "method: invalid enum value 'task.explode'"
    )
    # task.status: a method that needs no signature (a signed one is refused unsigned first).
    params = b'{"taskId":"t-1","logSince":%d}' % 2**70
    huge = b'{"kind":"request","id":"raw-1","method":"task.status","params":' + params + b"}"
    assert await _raw_call(live_server, "web-01", huge) == Response.failure(
        "raw-1", "MessageError", "params.logSince: expected an integer <= 9007199254740992"
    )


async def test_a_malformed_answer_fails_its_task_naming_the_machine_and_path(
    live_server: LiveServer, tentacles: Tentacles, mode: str
) -> None:
    """A tentacle whose task.status answer breaks its type (seq 2**70) fails that task, saying where;
    the server carries on calling it."""
    await tentacles.register("web-01", mode)
    agent = await tentacles.start("web-01")
    await eventually(lambda: live_server.online("web-01"), 10)

    async def rogue_status(params: StatusParams) -> StatusResult:
        line = LogLine(seq=2**70, time=time.time(), stream=LogStream.STDOUT, step="", text="x")
        return StatusResult(
            task_id=params.task_id,
            state="running",
            version=1,
            gates=[],
            log=[line],
            more=False,
        )

    agent.service.serve(TASK_STATUS, rogue_status)  # msgspec checks types when decoding, not building
    await apply(live_server, {"name": "Shop", "steps": [step("Hi", "echo hi")]})
    task_id = await deploy(live_server, "Shop", await release(live_server, "Shop"))
    done = await wait_task(live_server, task_id)
    assert done["state"] == "failed"
    malformed = "web-01 answered task.status with a malformed message: result.log[0].seq"
    assert f"{malformed}: expected an integer <= 9007199254740992" in done["error"]
    machine = live_server.server.db.sync(machines.find, "Default", "web-01")
    assert machine is not None
    assert (await live_server.server.fleet.call(machine, PING, NoParams(), timeout=5)).name == "web-01"


async def _ping(live: LiveServer, name: str) -> str:
    """The server's ping to the machine at the endpoint it has on record; the name that answers."""
    machine = await live.server.fleet.machine(name)
    assert machine is not None
    return (await live.server.fleet.call(machine, PING, NoParams(), timeout=5)).name


async def test_a_listening_tentacle_on_port_0_tells_the_server_its_port_at_each_start(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """Registered with port 0, it takes a free port at each start; the server then reaches it there."""
    await tentacles.register("web-01", "listening")
    assert (await live_server.machines())["web-01"]["endpoint"] == "https://127.0.0.1:0"
    for _ in range(2):
        agent = await tentacles.start("web-01")  # returns once the server has the port
        assert agent.bound_port
        endpoint = (await live_server.machines())["web-01"]["endpoint"]
        assert endpoint == f"https://127.0.0.1:{agent.bound_port}"
        assert await _ping(live_server, "web-01") == "web-01"
        await tentacles.stop("web-01")


async def test_the_port_report_waits_for_a_server_that_is_not_up_yet(
    server_home: InstancePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A listening tentacle started while its server is down reports its port once the server is back."""
    live = await start_server(server_home)
    ports = (live.server.bound.api, live.server.bound.polling)
    fleet = Tentacles(live, tmp_path / "t")
    await fleet.register("web-01", "listening")
    await stop_server(live)
    agent = await fleet.start("web-01", reachable=False)
    try:
        await eventually(lambda: _logged(caplog, "listening.report_failed"), 10)
        assert not agent.port_reported.is_set()
        live = await start_server(server_home, *ports)
        fleet.server = live
        await asyncio.wait_for(agent.port_reported.wait(), 10)
        assert await _ping(live, "web-01") == "web-01"
    finally:
        await fleet.stop_all()
        await stop_server(live)


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)
