"""`make demo` beside a program that holds its old ports, and beside the demo of another clone.

Each "clone" is a folder with this repository's demo/ and a link to its .venv: what demo.sh
and stop.sh see of a clone. The demos run as the user runs them (bash, real processes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OLD_FIXED_PORTS = (18443, 20943, 20933)  # what the demo used before it took free ports

pytestmark = pytest.mark.slow


def _clone(root: Path) -> Path:
    root.mkdir()
    shutil.copytree(REPO / "demo", root / "demo")
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def _demo(clone: Path) -> str:
    """Run the clone's demo.sh to its end; its output (the test fails unless it succeeded)."""
    done = subprocess.run(
        ["bash", str(clone / "demo" / "demo.sh")], capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Deployment: success" in done.stdout
    return done.stdout


def _stop(clone: Path) -> str:
    done = subprocess.run(
        ["bash", str(clone / "demo" / "stop.sh")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pids(clone: Path) -> dict[str, int]:
    lines = (clone / ".demo" / "pids").read_text().split("\n")
    return {name: int(pid) for name, pid in (line.split() for line in lines if line)}


def _ports(clone: Path) -> dict[str, int]:
    lines = (clone / ".demo" / "ports").read_text().split("\n")
    return {name: int(port) for name, port in (line.split() for line in lines if line)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


@contextlib.contextmanager
def _holding(ports: tuple[int, ...]) -> Iterator[None]:
    """Listen on each port (one already taken by someone else is held all the same)."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            sock = stack.enter_context(socket.socket())
            with contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port))
                sock.listen()
        yield


@pytest.fixture
def clones(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two clones; whatever demo either started is stopped at the end."""
    pair = (_clone(tmp_path / "a"), _clone(tmp_path / "b"))
    yield pair
    for clone in pair:
        if (clone / ".demo" / "pids").exists():
            _stop(clone)


def test_two_demos_run_side_by_side_beside_a_program_holding_the_old_ports(
    clones: tuple[Path, Path],
) -> None:
    """Both demos deploy on free ports while the old ones are held; each stop ends its own demo only."""
    first, second = clones
    with _holding(OLD_FIXED_PORTS):
        _demo(first)
        _demo(second)
    ports = [_ports(first), _ports(second)]
    taken = [port for each in ports for port in each.values()]
    assert len(set(taken)) == 6 and not set(taken) & set(OLD_FIXED_PORTS), ports
    first_pids, second_pids = _pids(first), _pids(second)
    stranger = subprocess.Popen(["sleep", "60"])  # a pid that is not the demo's
    try:
        with (second / ".demo" / "pids").open("a") as pids:
            pids.write(f"impostor {stranger.pid}\n")
        said = _stop(second)
        assert "stopped server" in said
        assert f"impostor (pid {stranger.pid}) is not running, or no longer this demo's" in said
        assert stranger.poll() is None, "stop.sh signalled a process that is not its demo's"
        assert not any(_alive(pid) for pid in second_pids.values())
        assert all(_alive(pid) for pid in first_pids.values())
    finally:
        stranger.kill()
        stranger.wait()
    _stop(first)
    assert not any(_alive(pid) for pid in first_pids.values())
