"""Faults between server and tentacle, through our fault proxy, in both modes.

Every conversation of a task (start, status with log, gates, cancel) crosses the proxy:
for a listening tentacle, the endpoint the server has on record is the proxy's port; for
a polling tentacle, its polling URL is. The promises: the task ends in the right state,
no step runs twice (each step appends its name to a marker file), and every line the
script printed reaches the server exactly once and in order (``seq 1 200``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rigs.faultproxy import Direction, FaultProxy
from rigs.instances import Server
from server_shim import app as server_app
from server_shim import server_config
from server_shim.server_config import Checks
from tentacle.agent import agent_config as config
from tentacle.agent import registration
from tentacle.agent.agent_config import HeartbeatConfig, ListenConfig
from tentacle.agent.daemon import Agent
from tentacle.agent.listening import report_port
from tentacle.common.paths import InstancePaths, resolve
from tests.conftest import (
    LiveServer,
    Tentacles,
    api_call,
    eventually,
    start_server,
    stop_server,
    tentacle_context,
)
from tests.deploying import apply, deploy, log_lines, release, step, texts, wait_task

NAME = "web-01"
LINES = [str(i) for i in range(1, 201)]
HEARTBEAT = 2.0  # both ends: the Tentacles helper's interval, and the server's POLL_HEARTBEAT here


@dataclass
class Rig:
    """A server, one tentacle whose every conversation with it crosses `proxy`, and a marker file."""

    live: LiveServer
    fleet: Tentacles
    proxy: FaultProxy
    mode: str
    paths: InstancePaths
    marks: Path

    def direction(self, what: str) -> Direction:
        """The proxy direction that carries the server's requests or the tentacle's responses."""
        requests: Direction = "up" if self.mode == "listening" else "down"
        responses: Direction = "down" if requests == "up" else "up"
        return requests if what == "requests" else responses

    def cut_requests(self) -> None:
        """From now on no request of the server arrives; what it already asked is still answered.

        Listening: every connection is reset at its next request byte (the long poll in flight
        keeps its connection, so its answer comes back). Polling: the server's frames are held,
        until the tentacle's heartbeat gives up on the socket and the server sees it close.
        """
        if self.mode == "listening":
            self.proxy.drop_at("up", 0, from_now=True, times=10**6)
        else:
            self.proxy.pause("down")

    def online(self) -> bool:
        """Whether the server sees the tentacle now."""
        return self.live.online(NAME)

    def offline(self) -> bool:
        """Whether the server has noticed the tentacle is gone."""
        return not self.live.online(NAME)

    def ran(self) -> list[str]:
        """The steps that started, in order, once per start."""
        return self.marks.read_text().split() if self.marks.exists() else []

    def step(self, name: str, body: str, **extra: Any) -> dict[str, Any]:
        """A step that records each of its starts in the marker file, then runs `body`."""
        return step(name, f"echo {name} >> {self.marks}; {body}", ("web",), **extra)


async def _listen_through(live: LiveServer, fleet: Tentacles, proxy: FaultProxy) -> InstancePaths:
    """Register on port 0 and start; then the proxy leads to the bound port and the server to the proxy.

    The rig tells the server the proxy's port the way the tentacle told it its own: with the
    tentacle's certificate, on the port-report route.
    """
    paths = await fleet.register(NAME, "listening")
    agent = await fleet.start(NAME)
    assert agent.bound_port is not None
    proxy.retarget("127.0.0.1", agent.bound_port)
    ctx = tentacle_context(paths)
    assert (
        await report_port(live.url, [live.thumbprint], ctx, proxy.port) == f"https://127.0.0.1:{proxy.port}"
    )
    return paths


async def _register_polling(live: LiveServer, fleet: Tentacles, proxy: FaultProxy) -> InstancePaths:
    """Register, then point the polling URL at the proxy."""
    paths = await fleet.register(NAME, "polling")
    conf = config.load(paths)
    url = f"wss://127.0.0.1:{proxy.port}/poll/v1"
    config.save(paths, conf.with_changes(server=dataclasses.replace(conf.server, polling_url=url)))
    return paths


@pytest.fixture
async def rig(
    server_home: InstancePaths, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """A server with a short heartbeat and one tentacle behind a fault proxy, online."""
    monkeypatch.setattr(server_app, "POLL_HEARTBEAT", HEARTBEAT)
    live = await start_server(server_home)
    fleet = Tentacles(live, tmp_path / "tentacles")
    proxy = FaultProxy("127.0.0.1", live.server.bound.polling)  # a listening tentacle's port comes later
    await proxy.start()
    try:
        if mode == "listening":
            paths = await _listen_through(live, fleet, proxy)
        else:
            paths = await _register_polling(live, fleet, proxy)
            await fleet.start(NAME)
        rig = Rig(live, fleet, proxy, mode, paths, tmp_path / "ran")
        await eventually(rig.online, 10)
        yield rig
    finally:
        await fleet.stop_all()
        await proxy.close()
        await stop_server(live)


async def _has_line(live: LiveServer, task_id: str, text: str) -> bool:
    return text in await texts(live, task_id, NAME)


async def _count_lines(live: LiveServer, task_id: str, step_name: str) -> list[str]:
    """The script's own output lines of one step, in the server's order."""
    lines = await log_lines(live, task_id)
    return [line["text"] for line in lines if line["step"] == step_name and line["stream"] == "stdout"]


def _counting_process(rig: Rig, name: str) -> dict[str, Any]:
    """Pre-acquisition, a step printing 1..200 in small bursts, and a step after it (two gates)."""
    count = "for i in $(seq 1 200); do echo $i; case $i in *0) sleep 0.02;; esac; done; sleep 0.3"
    return {
        "name": name,
        "steps": [
            rig.step("Pre", "echo pre", phase="preAcquisition"),
            rig.step("Count", count),
            rig.step("After", "echo after"),
        ],
    }


async def _assert_clean_run(rig: Rig, task_id: str) -> None:
    """Success, every step once, and 1..200 exactly once each, in order."""
    done = await wait_task(rig.live, task_id, timeout=60)
    assert done["state"] == "success", done
    assert rig.ran() == ["Pre", "Count", "After"]
    assert await _count_lines(rig.live, task_id, "Count") == LINES
    assert (await texts(rig.live, task_id, NAME)).count("after") == 1


@pytest.mark.parametrize("what", ["requests", "responses"])
async def test_drops_during_start_log_and_gates_lose_nothing_and_run_nothing_twice(
    rig: Rig, what: str
) -> None:
    """Connections dropped at several byte offsets in start, log and gates: nothing lost or run twice."""
    direction = rig.direction(what)
    await apply(rig.live, _counting_process(rig, "Drops"))
    version = await release(rig.live, "Drops")
    rig.proxy.drop_at(direction, 0, from_now=True)  # the next message at its first byte: task.start's
    task_id = await deploy(rig.live, "Drops", version)
    await eventually(lambda: _has_line(rig.live, task_id, "1"), 20, every=0.02)
    rig.proxy.drop_at(direction, 777, from_now=True)  # mid-message, while status answers carry lines
    await eventually(lambda: _has_line(rig.live, task_id, "200"), 20, every=0.02)
    rig.proxy.drop_at(direction, 40, from_now=True)  # near the end of Count: its gate, the next gate
    await _assert_clean_run(rig, task_id)
    assert rig.proxy.stats.drops >= 2, rig.proxy.stats


@pytest.mark.parametrize("what", ["requests", "responses"])
async def test_drops_during_cancel_still_cancel(rig: Rig, what: str) -> None:
    """A cancel whose messages are dropped still stops the running step, once, and ends cancelled."""
    await apply(rig.live, {"name": "Cancel", "steps": [rig.step("Sleep", "echo started; sleep 30")]})
    task_id = await deploy(rig.live, "Cancel", await release(rig.live, "Cancel"))
    await eventually(lambda: _has_line(rig.live, task_id, "started"), 20)
    rig.proxy.drop_at(rig.direction(what), 0, from_now=True, times=2)
    status, answer = await rig.live.api("POST", f"/api/Default/tasks/{task_id}/cancel/v1")
    assert status == 202, answer
    done = await wait_task(rig.live, task_id, timeout=30)
    assert done["state"] == "cancelled", done
    assert rig.ran() == ["Sleep"] and rig.proxy.stats.drops >= 1
    assert (await texts(rig.live, task_id, NAME)).count("started") == 1


async def test_a_pause_longer_than_the_heartbeat_is_noticed(rig: Rig) -> None:
    """Nothing gets through for longer than the heartbeat: the machine goes offline, then comes back."""
    rig.proxy.pause()
    await eventually(rig.offline, 4 * HEARTBEAT + 5)
    if rig.mode == "polling":  # the tentacle noticed too: its side of the socket is closed
        await eventually(lambda: _connection_state(rig.paths, "disconnected"), 10)
    rig.proxy.resume()
    await eventually(rig.online, 15)
    await apply(rig.live, {"name": "Back", "steps": [rig.step("Hello", "echo back")]})
    task_id = await deploy(rig.live, "Back", await release(rig.live, "Back"))
    assert (await wait_task(rig.live, task_id))["state"] == "success"


async def _connection_state(paths: InstancePaths, state: str) -> bool:
    path = paths.state / "connection.json"
    return path.exists() and json.loads(path.read_text())["state"] == state


async def test_a_half_open_connection_is_replaced_and_the_task_runs(rig: Rig) -> None:
    """The open connection turns into a black hole (a vanished peer): a new one takes over within seconds."""
    accepted = rig.proxy.stats.accepted
    rig.proxy.blackhole(open_only=True)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await eventually(lambda: _reconnected(rig, accepted), 4 * HEARTBEAT + 5)
    await apply(rig.live, _counting_process(rig, "Half"))
    task_id = await deploy(rig.live, "Half", await release(rig.live, "Half"))
    await _assert_clean_run(rig, task_id)
    assert loop.time() - began < 30


def _reconnected(rig: Rig, accepted: int) -> bool:
    return rig.proxy.stats.accepted > accepted and rig.online()


async def test_latency_each_way_keeps_tasks_and_log_order(rig: Rig) -> None:
    """200 ms added each way: the task still succeeds and its lines arrive complete and in order."""
    rig.proxy.set_latency(0.2)
    rig.proxy.reset()  # the next connections start under latency, handshake included
    await eventually(rig.online, 15)
    await apply(rig.live, _counting_process(rig, "Slow"))
    task_id = await deploy(rig.live, "Slow", await release(rig.live, "Slow"))
    await _assert_clean_run(rig, task_id)


# --- kill -9 of the server ------------------------------------------------------------------


class ServerProcess:
    """The rigs' real `server-shim run` process (rigs.instances.Server), from async code, with kill.

    Its first start binds port 0; a restart asks for the same ports, where the tentacle looks.
    """

    def __init__(self, home: Path) -> None:
        self.rig = Server(home)
        self.paths = resolve("server-shim", str(home))

    @property
    def url(self) -> str:
        """The API's base URL."""
        return self.rig.url

    @property
    def database(self) -> Path:
        """The SQLite file."""
        return self.paths.state / server_config.DATABASE_FILE

    @property
    def running(self) -> bool:
        """Whether the process runs now."""
        return self.rig.proc is not None and self.rig.proc.poll() is None

    async def init(self) -> None:
        """`server-shim init` on port 0, with fast checks of listening tentacles."""
        await asyncio.to_thread(self.rig.init)
        conf = server_config.load(self.paths)
        server_config.save(self.paths, conf.with_changes(checks=Checks(interval=0.5, timeout=2.0)))

    async def cli(self, *args: str) -> str:
        """Run one `server-shim` command; returns its stdout."""
        return await asyncio.to_thread(self.rig.cli, *args)

    async def start(self) -> None:
        """Start `server-shim run` and wait until it serves."""
        await asyncio.to_thread(self.rig.start)

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send `sig` and wait for the process to end; returns its exit code."""
        proc = self.rig.proc
        assert proc is not None
        proc.send_signal(sig)
        return await asyncio.to_thread(proc.wait, 20)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        """One operator API call that must succeed; returns its JSON body."""
        key = (self.paths.config / server_config.ADMIN_KEY_FILE).read_text().strip()
        ca = self.paths.config / server_config.CA_CERT
        status, answer = await api_call(self.url, ca, key, method, path, body)
        assert status < 300, answer
        return answer


def _integrity(database: Path) -> str:
    """SQLite's own verdict on the file (recovering its write-ahead log as any reader would)."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def _start_agent(server: ServerProcess, root: Path, mode: str) -> tuple[Agent, asyncio.Task[None]]:
    """Register a tentacle with the subprocess server and run it in this process."""
    paths = resolve("tentacle", str(root / NAME))
    reg = registration.Registration(
        server=server.url,
        token=await server.cli("token", "create"),
        server_thumbprint=await server.cli("show-thumbprint"),
        name=NAME,
        environments=("Dev",),
        roles=("web",),
        listen=ListenConfig(host="127.0.0.1", port=0) if mode == "listening" else None,
    )
    await registration.register(paths, reg)
    agent = Agent(paths, config.load(paths).with_changes(heartbeat=HeartbeatConfig(interval=HEARTBEAT)))
    return agent, asyncio.create_task(agent.serve())


async def _server_texts(server: ServerProcess, task_id: str) -> list[str]:
    page = await server.api("GET", f"/api/Default/tasks/{task_id}/log/v1?since=0")
    return [line["text"] for line in page["items"]]


async def _server_task_ended(server: ServerProcess, task_id: str) -> bool:
    state = (await server.api("GET", f"/api/Default/tasks/{task_id}/v1"))["state"]
    return state in ("success", "failed", "cancelled")


async def _server_sees_it_online(server: ServerProcess) -> bool:
    items = (await server.api("GET", "/api/Default/machines/v1"))["items"]
    return bool(items) and items[0]["status"] == "online"


async def _deploy_two_steps(server: ServerProcess, marks: Path) -> str:
    """A slow step then another, each recording its start in `marks`; returns the task id."""
    slow = step("Slow", f"echo Slow >> {marks}; echo before; sleep 2; echo after", ("web",))
    last = step("Next", f"echo Next >> {marks}; echo second", ("web",))
    await server.api("PUT", "/api/Default/projects/Crash/v1", {"name": "Crash", "steps": [slow, last]})
    release_of = {"projectName": "Crash", "releaseVersion": "1.0.0"}
    await server.api("POST", "/api/Default/releases/create/v1", release_of)
    deployment = {**release_of, "environmentNames": ["Dev"]}
    created = await server.api("POST", "/api/Default/deployments/create/untenanted/v1", deployment)
    return str(created["taskId"])


async def test_server_killed_mid_deployment_resumes_with_an_intact_database(
    tmp_path: Path, mode: str
) -> None:
    """kill -9 of `server-shim run` mid-step: on restart the task succeeds, nothing reruns, SQLite is ok."""
    server = ServerProcess(tmp_path / "server")
    await server.init()
    await server.start()
    marks = tmp_path / "ran"
    agent, running = await _start_agent(server, tmp_path / "tentacles", mode)
    try:
        await eventually(lambda: _server_sees_it_online(server), 15)
        task_id = await _deploy_two_steps(server, marks)
        await eventually(lambda: _contains(_server_texts(server, task_id), "before"), 15, every=0.05)
        assert await server.kill() == -signal.SIGKILL
        assert _integrity(server.database) == "ok"
        await server.start()
        await eventually(lambda: _server_task_ended(server, task_id), 40, every=0.2)
        done = await server.api("GET", f"/api/Default/tasks/{task_id}/v1")
        assert done["state"] == "success", done
        lines = await _server_texts(server, task_id)
        assert [lines.count(t) for t in ("before", "after", "second")] == [1, 1, 1], lines
        assert marks.read_text().split() == ["Slow", "Next"]
        assert "task.resumed" in server.rig.log.read_text()  # the second start's output
    finally:
        agent.stop.set()
        await asyncio.wait_for(running, 15)
        if server.running:
            assert await server.kill(signal.SIGTERM) == 0
    assert _integrity(server.database) == "ok"


async def _contains(texts_of: Awaitable[list[str]], text: str) -> bool:
    return text in await texts_of


async def test_a_lost_finish_does_not_hold_the_tentacle_forever(rig: Rig) -> None:
    """The calls that end a failed task on a target are lost: the target still runs the next task."""
    await rig.fleet.register("db-01", rig.mode, roles=("db",))
    await rig.fleet.start("db-01")
    await eventually(lambda: rig.live.online("db-01"), 10)
    first = rig.step("One", '[ "$TENTACLE_MACHINE_NAME" = db-01 ] && exit 1; echo started; sleep 1.5')
    first["roles"] = ["web", "db"]
    await apply(rig.live, {"name": "Fail", "steps": [first, rig.step("Two", "echo two")]})
    task_id = await deploy(rig.live, "Fail", await release(rig.live, "Fail"))
    await eventually(lambda: _has_line(rig.live, task_id, "started"), 10, every=0.02)
    await asyncio.sleep(0.3)  # the next status long poll of web-01 is on its way
    rig.cut_requests()  # its answer (gate passed) gets back, but then task.finish is lost
    done = await wait_task(rig.live, task_id, timeout=20)
    assert done["state"] == "failed" and "db-01" in done["error"], done
    await asyncio.sleep(2 * HEARTBEAT)  # long enough for the task's last calls to give up
    rig.proxy.heal()
    await eventually(rig.online, 15)
    await eventually(lambda: _ended_on_the_tentacle(rig.paths, task_id), 10)
    await apply(rig.live, {"name": "Next", "steps": [rig.step("Hello", "echo next")]})
    second = await deploy(rig.live, "Next", await release(rig.live, "Next"), machines=[NAME])
    assert (await wait_task(rig.live, second, timeout=20))["state"] == "success"
    assert sorted(rig.ran()) == ["Hello", "One", "One"]  # One on both targets, Hello once


async def _ended_on_the_tentacle(paths: InstancePaths, task_id: str) -> bool:
    """Whether the tentacle's own record of the task (task.json) says it no longer holds the slot."""
    record = json.loads((paths.state / "tasks" / task_id / "task.json").read_text())
    return bool(record["state"] != "running")


async def test_a_package_transfer_cut_half_way_resumes_and_the_step_runs_once(
    rig: Rig, tmp_path: Path
) -> None:
    """The package's bytes cross a fault proxy that resets the connection mid-body; it resumes.

    Listening: the server's push crosses the rig's proxy (the endpoint on record). Polling: the
    tentacle's fetch from the server's feed is pointed at a second proxy in front of the API.
    """
    from server_shim.store import feed_store as feed
    from tests.test_acquisition import _zip

    data = _zip({"readme.txt": b"pushed through a fault", "blob": os.urandom(3 * 1024 * 1024)})
    source = tmp_path / "Web.1.0.0.zip"
    source.write_bytes(data)
    await asyncio.to_thread(feed.push, rig.live.server.db, feed.store_dir(rig.live.paths.state), source)
    api_proxy = FaultProxy("127.0.0.1", rig.live.server.bound.api)
    await api_proxy.start()
    try:
        if rig.mode == "listening":
            drop = rig.proxy.drop_at("up", 1024 * 1024, from_now=True, times=1)
        else:
            await rig.fleet.stop(NAME)
            conf = config.load(rig.paths)
            server = dataclasses.replace(conf.server, url=f"https://127.0.0.1:{api_proxy.port}")
            config.save(rig.paths, conf.with_changes(server=server))
            await rig.fleet.start(NAME)
            await eventually(rig.online, 10)
            drop = api_proxy.drop_at("down", 1024 * 1024, times=1)
        web = rig.step("Web", "head -c 22 $PACKAGE_DIR/readme.txt; echo")
        await apply(rig.live, {"name": "Cut", "steps": [{**web, "package": {"id": "Web"}}]})
        done = await wait_task(
            rig.live, await deploy(rig.live, "Cut", await release(rig.live, "Cut")), timeout=60
        )
        assert done["state"] == "success", done.get("error")
        assert drop.times == 0, "the transfer was never cut"
        assert "pushed through a fault" in await texts(rig.live, done["taskId"], NAME)
        assert rig.ran() == ["Web"]
    finally:
        await api_proxy.close()
