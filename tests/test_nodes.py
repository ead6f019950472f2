"""Two server nodes on one real PostgreSQL, as real processes, with real tentacle processes.

A deployment to a listening and a polling tentacle survives ``kill -9`` of the node that
owns it: the other node takes it over within the lease and finishes it, every step once
on every target, every line in the log once. ``node drain`` hands a running task over
without failing it and stops the node. API requests go to either node alike. A signing
key rotated on one node is used by the other at once, with no file copied and no restart.
"""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rigs.instances import Server, run_cli, wait_until
from rigs.pgcluster import Cluster
from tests.conftest import run_tentacle

STEPS = [
    {
        "name": "Slow",
        "roles": ["web"],
        "script": {
            "syntax": "bash",
            "body": 'echo "slow $TENTACLE_MACHINE_NAME" >> "$MARKS/$TENTACLE_MACHINE_NAME";'
            ' for i in 1 2 3 4 5 6 7 8; do echo "tick $i"; sleep 1; done',
        },
    },
    {
        "name": "Fast",
        "roles": ["web"],
        "script": {"syntax": "bash", "body": 'echo "fast" >> "$MARKS/$TENTACLE_MACHINE_NAME"; echo done'},
    },
]


@dataclass
class Cluster2:
    """Two nodes of one server, two tentacles (listening, polling), and where steps leave marks."""

    a: Server
    b: Server
    marks: Path
    tentacles: list[subprocess.Popen[bytes]]

    def nodes(self, via: Server) -> dict[str, dict[str, Any]]:
        """`node list --json` by name."""
        return {n["name"]: n for n in json.loads(via.cli("node", "list", "--json"))}

    def by_name(self, name: str) -> Server:
        return self.a if name == "a" else self.b


def _register(server: Server, other: Server, home: Path, name: str, mode: str) -> None:
    token = server.cli("token", "create")
    thumb = server.cli("show-thumbprint")
    where = ["--listen", "127.0.0.1:0"] if mode == "listening" else ["--polling"]
    run_cli(
        "tentacle", "--home", str(home), "register", "--server", server.url, "--server", other.url,
        "--token", token, "--server-thumbprint", thumb, "--name", name, "--environment", "Dev",
        "--role", "web", *where,
    )  # fmt: skip


@pytest.fixture
def two_nodes(tmp_path: Path, pg_cluster: Cluster) -> Iterator[Cluster2]:
    """Node a (init), node b (join with a's secrets), both running; a listening and a polling tentacle."""
    url = pg_cluster.create_database(f"nodes{time.monotonic_ns()}")
    a = Server(tmp_path / "a", database=url, node="a")
    a.init()
    secrets = tmp_path / "secrets.json"
    a.cli("node", "secrets", "--output", str(secrets))
    assert secrets.stat().st_mode & 0o777 == 0o600
    run_cli(
        "server_shim", "--home", str(tmp_path / "b"), "node", "join", "--database", url, "--secrets",
        str(secrets), "--public-url", "https://127.0.0.1:8443", "--listen", "127.0.0.1:0",
        "--polling-listen", "127.0.0.1:0", "--node", "b",
    )  # fmt: skip
    b = Server(tmp_path / "b", node="b")
    marks = tmp_path / "marks"
    marks.mkdir()
    cluster = Cluster2(a, b, marks, [])
    try:
        a.start()
        b.start()
        assert a.cli("show-thumbprint") == b.cli("show-thumbprint")
        _register(a, b, tmp_path / "t-listen", "listen-01", "listening")
        _register(b, a, tmp_path / "t-poll", "poll-01", "polling")
        for home in ("t-listen", "t-poll"):
            env_log = tmp_path / f"{home}.log"
            proc = run_tentacle(tmp_path / home, env_log)
            cluster.tentacles.append(proc)
        for node in (a, b):
            wait_until(functools.partial(_all_online, node), 30, what="both tentacles online on every node")
        doc = {"name": "Shop", "steps": STEPS, "variables": [{"name": "MARKS", "value": str(marks)}]}
        a.call("PUT", "/api/Default/projects/Shop/v1", doc)
        b.call("POST", "/api/Default/releases/create/v1", {"projectName": "Shop", "releaseVersion": "1.0.0"})
        yield cluster
    finally:
        for proc in cluster.tentacles:
            proc.kill()
            proc.wait()
        for node in (a, b):
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()


def _all_online(node: Server) -> bool:
    return node.online() == 2


def _deploy(on: Server) -> str:
    body = {"projectName": "Shop", "releaseVersion": "1.0.0", "environmentNames": ["Dev"]}
    return str(on.call("POST", "/api/Default/deployments/create/untenanted/v1", body)["taskId"])


def _marks(cluster: Cluster2) -> dict[str, list[str]]:
    return {p.name: p.read_text().splitlines() for p in sorted(cluster.marks.iterdir())}


def _finished(server: Server, task_id: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(server.call("GET", f"/api/Default/tasks/{task_id}/v1"))
        return found["state"] in ("success", "failed", "cancelled")

    wait_until(done, timeout, every=0.5, what=f"task {task_id} finished")
    return found


def _log_texts(server: Server, task_id: str) -> list[str]:
    page = server.call("GET", f"/api/Default/tasks/{task_id}/log/v1")
    assert page["totalCount"] == len(page["items"])
    return [f"{line['machineName']}: {line['text']}" for line in page["items"] if line["stream"] == "stdout"]


def _owner(server: Server, task_id: str) -> str:
    items = server.call("GET", "/api/Default/tasks/v1?take=1")["items"]
    assert items[0]["taskId"] == task_id
    return str(items[0]["node"])


def _slow_started(cluster: Cluster2) -> bool:
    marks = _marks(cluster)
    return len(marks) == 2 and all(lines == ["slow " + name] for name, lines in marks.items())


@pytest.mark.slow
def test_a_task_survives_kill_9_of_its_node_every_step_once(two_nodes: Cluster2) -> None:
    """The owner dies mid-step; the other node resumes the task and finishes it: each step ran once
    on each target, the log holds each line once, and the take-over came within 30 s."""
    task_id = _deploy(two_nodes.a)
    wait_until(lambda: _owner(two_nodes.a, task_id) in ("a", "b"), 10)
    owner = _owner(two_nodes.a, task_id)
    survivor = two_nodes.b if owner == "a" else two_nodes.a
    wait_until(lambda: _slow_started(two_nodes), 30, what="the slow step started on both targets")
    dying = two_nodes.by_name(owner)
    assert dying.proc is not None
    dying.proc.send_signal(signal.SIGKILL)
    dying.proc.wait()
    killed = time.monotonic()
    other = "b" if owner == "a" else "a"
    wait_until(lambda: _owner(survivor, task_id) == other, 30, what="the task taken over")
    assert time.monotonic() - killed <= 30
    task = _finished(survivor, task_id, 90)
    assert task["state"] == "success", task
    assert _marks(two_nodes) == {"listen-01": ["slow listen-01", "fast"], "poll-01": ["slow poll-01", "fast"]}
    lines = _log_texts(survivor, task_id)
    for machine in ("listen-01", "poll-01"):
        ticks = [line for line in lines if line.startswith(machine) and "tick" in line]
        assert ticks == [f"{machine}: tick {i}" for i in range(1, 9)], lines
        assert lines.count(f"{machine}: done") == 1


@pytest.mark.slow
def test_drain_hands_a_running_task_over_and_stops_the_node(two_nodes: Cluster2) -> None:
    """`node drain` moves the owner's running task to the other node, which finishes it; the
    drained node exits and `node list` shows it stopped."""
    task_id = _deploy(two_nodes.b)
    wait_until(lambda: _slow_started(two_nodes), 30, what="the slow step started on both targets")
    owner = _owner(two_nodes.a, task_id)
    other = "b" if owner == "a" else "a"
    survivor = two_nodes.by_name(other)
    out = survivor.cli("node", "drain", owner)
    assert f"node {owner} drained and stopped" in out
    drained = two_nodes.by_name(owner)
    assert drained.proc is not None and drained.proc.wait(30) == 0
    task = _finished(survivor, task_id, 60)
    assert task["state"] == "success", task
    assert _owner(survivor, task_id) == other
    assert _marks(two_nodes) == {"listen-01": ["slow listen-01", "fast"], "poll-01": ["slow poll-01", "fast"]}
    nodes = two_nodes.nodes(survivor)
    assert nodes[owner]["state"] == "stopped" and nodes[other]["alive"] is True


def test_either_node_answers_for_the_whole_server(two_nodes: Cluster2) -> None:
    """A task made on one node reads the same on the other; both see both tentacles online."""
    task_id = _deploy(two_nodes.a)
    assert two_nodes.b.call("GET", f"/api/Default/tasks/{task_id}/v1")["taskId"] == task_id
    _finished(two_nodes.b, task_id, 60)
    for node in (two_nodes.a, two_nodes.b):
        listed = node.call("GET", "/api/Default/machines/v1")
        assert {m["name"]: m["status"] for m in listed["items"]} == {
            "listen-01": "online",
            "poll-01": "online",
        }
        assert all(m["lastSeen"] for m in listed["items"])
    nodes = two_nodes.nodes(two_nodes.a)
    assert set(nodes) == {"a", "b"} and all(n["alive"] and n["state"] == "running" for n in nodes.values())
    assert {n["agents"] for n in nodes.values()} == {2}
    # Each tentacle holds a link to both nodes, yet came online once, for the whole server.
    came = two_nodes.b.call("GET", "/api/Default/events/v1?kind=machineOnline")["items"]
    assert sorted(e["machineName"] for e in came) == ["listen-01", "poll-01"]


def _pinned_key_id(home: Path) -> str:
    """The signing key a tentacle holds to now (`tentacle status --json`)."""
    return str(json.loads(run_cli("tentacle", "--home", str(home), "status", "--json"))["signingKeyId"])


def _pins(home: Path, key_id: str) -> bool:
    return _pinned_key_id(home) == key_id


def _holds_only(node: Server, key_id: str) -> bool:
    return [key["keyId"] for key in _signing_status(node)["keys"]] == [key_id]


def _no_file(node: Server, key_id: str) -> bool:
    return not list(node.home.rglob(f"{key_id}.key"))


def _signing_status(node: Server) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(node.cli("signing-key", "status", "--json", "--server", node.url))
    return status


def test_a_key_rotated_on_one_node_signs_the_other_nodes_deployments(two_nodes: Cluster2) -> None:
    """`signing-key rotate` on a: both tentacles pin the new key; b, with no key file copied and
    no restart, drives a deployment to both that succeeds, and shows the new key current; the
    old key is retired from both nodes."""
    a, b = two_nodes.a, two_nodes.b
    old = _signing_status(b)["currentKeyId"]
    assert not _no_file(b, old)  # `node join` copied the first key's file to b
    new = a.cli("signing-key", "rotate", "--server", a.url)
    # At once: b may sign the first step with the key it held, which a is handing over meanwhile.
    task_id = _deploy(b)
    assert new != old and not list(b.home.rglob(f"{new}.key"))  # b's home never gets the file
    wait_until(lambda: _owner(b, task_id) in ("a", "b"), 10, what="the task owned")
    assert _owner(b, task_id) == "b"  # b made it, so b drives it and signs its plans
    tentacle_homes = [two_nodes.marks.parent / name for name in ("t-listen", "t-poll")]
    for home in tentacle_homes:
        wait_until(functools.partial(_pins, home, new), 30, what=f"{home.name} pins the new key")
    task = _finished(b, task_id, 60)  # its second step starts after the hand-over: signed by the new key
    assert task["state"] == "success", (task, _log_texts(b, task_id))
    assert _marks(two_nodes) == {"listen-01": ["slow listen-01", "fast"], "poll-01": ["slow poll-01", "fast"]}
    status = _signing_status(b)
    assert status["currentKeyId"] == new and status["pending"] == []
    for node in (a, b):
        wait_until(functools.partial(_holds_only, node, new), 30, what=f"the old key retired on {node.node}")
        wait_until(functools.partial(_no_file, node, old), 10, what=f"its file gone from {node.node}")
