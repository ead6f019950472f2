"""The real boot test: the project's systemd units in a booted Debian bookworm container.

A new user's steps, inside a container booted with systemd as PID 1 (tests/bootenv.py):
``server-shim init`` and ``server-shim service install --start``, then ``tentacle register
--polling`` and ``tentacle service install --start`` (hardened profile, user tentacle).
The tests then prove what issue 5 asks of the running services: readiness, registration,
a clean stop, restart after kill -9, the sandbox, and journal priorities.

The tests share one boot (it costs about half a minute; the first debootstrap about two
minutes more) and each starts from both services running. They need root, debootstrap and
systemd-nspawn, and fail without them: CI installs both.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bootenv import (
    SHARE,
    BootError,
    Container,
    booted,
    build_wheels,
    debian_root,
    install_project,
    require_tools,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROJECT = Path(__file__).resolve().parent.parent
MACHINE = "box-01"
SERVER = "https://127.0.0.1:8443"
CONNECTION = "/var/lib/tentacle/connection.json"
EVIL = {
    "name": "Evil",
    "steps": [
        {"name": "Touch", "roles": ["web"], "script": {"syntax": "bash", "body": "id; touch /usr/evil"}}
    ],
}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A booted container with the server and a polling tentacle installed as services."""
    require_tools()
    root = debian_root()
    share = tmp_path_factory.mktemp("share")
    build_wheels(PROJECT, share / "wheels")
    (share / "evil.json").write_text(json.dumps(EVIL))
    console = share.parent / "console.log"
    with booted(root, share, f"tentacle-boot-{os.getpid()}", console) as container:
        install_project(container)
        _install_services(container)
        yield container


def _install_services(box: Container) -> None:
    """What the README tells a new user to type, as root, on a systemd host."""
    listen = "--listen 127.0.0.1:8443 --polling-listen 127.0.0.1:10943"
    box.run(*f"server-shim init --public-url {SERVER} {listen}".split())
    _install_service(box, "server-shim")
    token = box.run("server-shim", "token", "create").stdout.strip()
    thumbprint = box.run("server-shim", "show-thumbprint").stdout.strip()
    register = f"--token {token} --server-thumbprint {thumbprint} --name {MACHINE} --environment Dev"
    box.run(*f"tentacle register --server {SERVER} {register} --role web --polling".split())
    _install_service(box, "tentacle")


def _install_service(box: Container, program: str) -> None:
    """``PROGRAM service install --start``; when it fails, say why with the unit's journal."""
    try:
        box.run(program, "service", "install", "--start")
    except BootError as exc:
        journal = box.run("journalctl", "--no-pager", "-o", "cat", "-n", "15", "-u", program).stdout
        raise BootError(f"{exc.message}\njournalctl -u {program}:\n{journal}") from exc


@pytest.fixture
def running(box: Container) -> Container:
    """Both services running and the tentacle connected, whatever the previous test did."""
    box.run("systemctl", "start", "server-shim.service", "tentacle.service")
    wait_until(lambda: _connected(box), 30, "the tentacle connects to the server")
    return box


def _connected(box: Container) -> bool:
    """Whether the tentacle's current main process reports a live connection to the server."""
    main = box.show("tentacle", "MainPID")["MainPID"]
    state = _connection(box)
    return state.get("state") == "connected" and str(state.get("pid")) == main


def _connection(box: Container) -> dict[str, object]:
    """The connection state the daemon writes for `tentacle status` (empty when absent)."""
    done = box.run("cat", CONNECTION, check=False)
    return dict(json.loads(done.stdout)) if done.returncode == 0 and done.stdout else {}


def _machines(box: Container) -> dict[str, str]:
    """Machine name -> status, as `server-shim machines --json` lists them."""
    listed = json.loads(box.run("server-shim", "machines", "--json").stdout)
    return {machine["name"]: machine["status"] for machine in listed}


def _messages(entries: list[dict[str, object]]) -> list[str]:
    """The MESSAGE of each journal entry the tentacle daemon itself wrote."""
    return [str(e["MESSAGE"]) for e in entries if e.get("SYSLOG_IDENTIFIER") == "tentacle"]


def _warned(box: Container, cursor: str) -> bool:
    """Whether the daemon logged a failed connection attempt since ``cursor``."""
    entries = box.journal("-u", "tentacle", after=cursor)
    return any("polling.connect_failed" in message for message in _messages(entries))


def test_tentacle_is_active_only_once_it_has_sent_ready(running: Container) -> None:
    """The unit is "active (running)" only once the daemon sent READY=1; without it, it stays activating."""
    shown = running.show("tentacle", "ActiveState", "SubState", "StatusText")
    assert shown == {"ActiveState": "active", "SubState": "running", "StatusText": f"polling as {MACHINE}"}
    # The same daemon without a notification socket: it runs and connects, but never says READY.
    dropin = "/run/systemd/system/tentacle.service.d/50-no-notify.conf"
    running.write(dropin, "[Service]\nUnsetEnvironment=NOTIFY_SOCKET\n")
    running.run("systemctl", "daemon-reload")
    running.run("systemctl", "restart", "--no-block", "tentacle")
    try:
        wait_until(lambda: _connected(running), 30, "the tentacle connects without a notify socket")
        shown = running.show("tentacle", "ActiveState", "SubState", "StatusText")
        assert shown == {"ActiveState": "activating", "SubState": "start", "StatusText": ""}
    finally:
        running.run("rm", dropin)
        running.run("systemctl", "daemon-reload")
    running.run("systemctl", "restart", "tentacle")
    assert running.show("tentacle", "ActiveState")["ActiveState"] == "active"


def test_tentacle_registers_and_shows_online(running: Container) -> None:
    """The service's tentacle is registered on the server and shows online there."""
    wait_until(lambda: _machines(running) == {MACHINE: "online"}, 30, f"{MACHINE} shows online")
    status = json.loads(running.run("tentacle", "status", "--json").stdout)
    assert status["registered"] is True and status["mode"] == "polling"
    assert status["connection"]["state"] == "connected"


def test_systemctl_stop_is_clean(running: Container) -> None:
    """`systemctl stop` ends the daemon with exit 0 on SIGTERM alone, well within TimeoutStopSec."""
    cursor = running.cursor()
    start = time.monotonic()
    running.run("systemctl", "stop", "tentacle")
    took = time.monotonic() - start
    shown = running.show(
        "tentacle", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus", "TimeoutStopUSec"
    )
    assert shown["ActiveState"] == "inactive" and shown["Result"] == "success"
    assert (shown["ExecMainCode"], shown["ExecMainStatus"]) == ("1", "0")  # CLD_EXITED, status 0
    assert shown["TimeoutStopUSec"] == "1min" and took < 10
    lines = [str(e["MESSAGE"]) for e in running.journal("-u", "tentacle", after=cursor)]
    assert any("agent.stopped" in line for line in lines), lines
    assert not [line for line in lines if "SIGKILL" in line or "timed out" in line], lines


def test_kill_9_of_the_main_process_is_restarted(running: Container) -> None:
    """After kill -9 of its main process systemd restarts the tentacle, which comes back online."""
    before = running.show("tentacle", "MainPID", "NRestarts")
    running.run("bash", "-c", f"kill -9 {before['MainPID']}")

    def restarted() -> bool:
        now = running.show("tentacle", "NRestarts", "ActiveState", "SubState")
        return now == {
            "NRestarts": str(int(before["NRestarts"]) + 1),
            "ActiveState": "active",
            "SubState": "running",
        }

    wait_until(restarted, 30, "systemd restarts the tentacle")
    assert running.show("tentacle", "MainPID")["MainPID"] != before["MainPID"]
    wait_until(lambda: _connected(running), 30, "the restarted tentacle reconnects")
    assert _machines(running) == {MACHINE: "online"}


def test_hardened_sandbox_keeps_deployment_steps_off_usr(running: Container) -> None:
    """A deployment step that writes to /usr fails with "Read-only file system" and writes nothing."""
    running.run("server-shim", "project", "apply", f"{SHARE}/evil.json")
    running.run("server-shim", "release", "create", "--project", "Evil", "--version", "1.0.0")
    deploy_evil = "server-shim deploy --project Evil --version 1.0.0 --environment Dev --follow"
    deploy = running.run(*deploy_evil.split(), check=False)
    log = deploy.stdout + deploy.stderr
    assert deploy.returncode == 1, log
    assert "uid=" in log and "(tentacle)" in log, log  # the step ran, as the service user
    assert "cannot touch '/usr/evil': Read-only file system" in log, log
    assert running.run("test", "-e", "/usr/evil", check=False).returncode == 1
    # The same user outside the unit meets file permissions, not a read-only mount:
    # the read-only /usr is the sandbox's doing.
    outside = running.run("runuser", "-u", "tentacle", "--", "touch", "/usr/evil", check=False)
    assert "Permission denied" in outside.stderr, outside.stderr


def test_journal_priority_filter_shows_only_warnings_and_worse(running: Container) -> None:
    """`journalctl -u tentacle -p warning` keeps the daemon's warnings and drops its info lines."""
    cursor = running.cursor()
    running.run("systemctl", "stop", "server-shim")
    try:
        wait_until(lambda: _warned(running, cursor), 30, "the tentacle warns it cannot reach the server")
    finally:
        running.run("systemctl", "start", "server-shim")
    wait_until(lambda: _connected(running) and _machines(running)[MACHINE] == "online", 30, "reconnect")
    everything = running.journal("-u", "tentacle", after=cursor)
    warnings = running.journal("-u", "tentacle", "-p", "warning", after=cursor)
    assert all(int(str(e["PRIORITY"])) <= 4 for e in warnings), warnings
    assert any(m.startswith("polling.connect_failed") for m in _messages(warnings)), warnings
    assert not [m for m in _messages(warnings) if m.startswith(("polling.connected", "polling.retry"))]
    info = [e for e in everything if str(e["MESSAGE"]).startswith("polling.connected")]
    assert info and all(e["PRIORITY"] == "6" for e in info), info
    assert not [m for m in _messages(everything) if m.startswith("<")]  # journald took the prefixes
