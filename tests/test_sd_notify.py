"""sd_notify over real datagram sockets: ready, status, stopping and reloading, an abstract
socket, quiet outside systemd, failures logged once, and the watchdog's interval and loop."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tentacle.common import sdnotify

# --- sd_notify ----------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound where $NOTIFY_SOCKET points, as systemd provides it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        path = tmp_path / "notify"
        receiver.bind(str(path))
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield receiver


def test_ready_sends_ready_and_status(notify_socket: socket.socket) -> None:
    """ready() sends READY=1 with a one-line STATUS."""
    assert sdnotify.ready("listening on\n:10933") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=listening on :10933"


def test_status_stopping_and_reloading_messages(notify_socket: socket.socket) -> None:
    """status(), stopping() and reloading() send the fields systemd expects."""
    sdnotify.status("idle")
    sdnotify.stopping()
    sdnotify.reloading()
    assert notify_socket.recv(4096) == b"STATUS=idle"
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", notify_socket.recv(4096))


def test_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """An @name NOTIFY_SOCKET reaches a socket in the abstract namespace."""
    name = f"tentacle-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1") is True
        assert receiver.recv(4096) == b"READY=1"


def test_notify_outside_systemd_is_a_quiet_no(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET every helper returns False and nothing is sent."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready("up") is False
    assert sdnotify.stopping() is False


def test_notify_failures_are_swallowed_and_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A socket nobody listens on makes notify return False, logging one warning only."""
    monkeypatch.setattr(sdnotify, "_failure_logged", False)  # fresh process state
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="tentacle.common.sdnotify"):
        assert sdnotify.notify("WATCHDOG=1") is False
        assert sdnotify.notify("WATCHDOG=1") is False
    assert [record.getMessage().split()[0] for record in caplog.records] == ["sdnotify.failed"]


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 15.0),
        ("30000000", "own", 15.0),
        ("30000000", "1", None),
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, interval: float | None
) -> None:
    """Half of WATCHDOG_USEC in seconds, only for the process WATCHDOG_PID names."""
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "own" else value)
    assert sdnotify.watchdog_interval() == interval


async def test_watchdog_loop_pings_at_the_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watchdog_loop sends WATCHDOG=1 repeatedly at half the watchdog timeout."""
    monkeypatch.setenv("WATCHDOG_USEC", "40000")  # a ping every 20 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notify_socket.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(sdnotify.watchdog_loop())
    try:
        pings = [await asyncio.wait_for(loop.sock_recv(notify_socket, 64), 5) for _ in range(3)]
    finally:
        task.cancel()
    assert pings == [b"WATCHDOG=1"] * 3


async def test_watchdog_loop_ends_without_a_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without WATCHDOG_USEC the loop returns at once."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(sdnotify.watchdog_loop(), 1)
