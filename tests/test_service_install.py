"""Service install and uninstall: the unit written, the user made, systemctl asked, each failure
a clear error, and a dry run that changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from tentacle.common.units import ServiceError, default_units, install_service, render_unit, uninstall_service
from tests.units_helpers import EXECUTABLE, _directives

# --- service install --------------------------------------------------------------------


class Recorder:
    """The ``run`` seam of install_service: records commands, fails the one named."""

    def __init__(self, fail: str | None = None) -> None:
        """Record every command; answer ``fail`` (a subcommand) with exit 1."""
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Record ``argv`` and pretend it ran."""
        self.calls.append(list(argv))
        if self.fail in argv:
            return subprocess.CompletedProcess(list(argv), 1, "", "Access denied\n")
        return subprocess.CompletedProcess(list(argv), 0, "", "")


@pytest.fixture
def booted(tmp_path: Path) -> Path:
    """A marker directory standing for /run/systemd/system on a systemd host."""
    marker = tmp_path / "run-systemd-system"
    marker.mkdir()
    return marker


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """An empty directory standing for /etc/systemd/system."""
    directory = tmp_path / "units"
    directory.mkdir()
    return directory


def test_dry_run_returns_the_unit_and_changes_nothing(
    unit_dir: Path, booted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run returns the unit it would write, and runs, writes and prints nothing."""
    recorder = Recorder()
    text = install_service(
        "tentacle",
        executable="/usr/local/bin/tentacle",
        dry_run=True,
        start=True,
        unit_dir=unit_dir,
        run=recorder,
        booted_marker=booted,
    )
    assert text == default_units()["tentacle.service"]
    assert capsys.readouterr().out == ""
    assert list(unit_dir.iterdir()) == []
    assert recorder.calls == []


def test_install_writes_enables_and_starts_on_a_systemd_host(unit_dir: Path, booted: Path) -> None:
    """install writes the unit (0644), then daemon-reload, enable and start."""
    recorder = Recorder()
    text = install_service(
        "server-shim",
        executable=EXECUTABLE,
        user="nobody",
        start=True,
        unit_dir=unit_dir,
        run=recorder,
        booted_marker=booted,
    )
    path = unit_dir / "server-shim.service"
    assert path.read_text() == text
    assert text == render_unit("server-shim", executable=EXECUTABLE, user="nobody")
    assert path.stat().st_mode & 0o777 == 0o644
    assert recorder.calls == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "server-shim.service"],
        ["systemctl", "start", "server-shim.service"],
    ]


def test_install_creates_a_missing_user_and_names_the_instance(unit_dir: Path, tmp_path: Path) -> None:
    """A missing user is created with useradd; a --home instance gets its own unit name."""
    recorder = Recorder()
    user = f"tt{uuid.uuid4().hex[:12]}"
    home = tmp_path / "blue"
    install_service(
        "tentacle",
        executable=[EXECUTABLE, "-m", "tentacle"],
        home=str(home),
        user=user,
        start=True,
        unit_dir=unit_dir,
        run=recorder,
        booted_marker=tmp_path / "not-booted",
    )
    assert recorder.calls == [
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
        ["systemctl", "enable", "tentacle-blue.service"],
    ]
    values = _directives((unit_dir / "tentacle-blue.service").read_text())
    assert values["ExecStart"] == [f"{EXECUTABLE} -m tentacle --home {home} run"]
    assert values["User"] == [user]


def test_install_as_root_creates_no_user(unit_dir: Path, booted: Path) -> None:
    """The root profile runs as root: no useradd, no User= line."""
    recorder = Recorder()
    install_service(
        "tentacle",
        executable=EXECUTABLE,
        as_root=True,
        unit_dir=unit_dir,
        run=recorder,
        booted_marker=booted,
    )
    assert [call[0] for call in recorder.calls] == ["systemctl", "systemctl"]
    assert "User" not in _directives((unit_dir / "tentacle.service").read_text())


def test_systemctl_failure_is_a_service_error(unit_dir: Path, booted: Path) -> None:
    """A failing systemctl command raises ServiceError naming the command and its reason."""
    with pytest.raises(ServiceError, match=r"systemctl enable tentacle.service failed \(exit 1\)"):
        install_service(
            "tentacle",
            executable=EXECUTABLE,
            user="nobody",
            unit_dir=unit_dir,
            run=Recorder(fail="enable"),
            booted_marker=booted,
        )


def test_install_without_root_is_a_clear_error(tmp_path: Path) -> None:
    """Someone who cannot write the unit directory is told that it needs root."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(mode=0o555)
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from tentacle.common.units import ServiceError, install_service
        try:
            install_service("tentacle", executable=sys.executable, user="nobody",
                            unit_dir=Path(sys.argv[1]), run=lambda argv: sys.exit("ran"))
        except ServiceError as exc:
            print(exc.exit_code, exc)
        """
    )
    argv = [sys.executable, "-c", code, str(unit_dir)]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, check=True, cwd="/")
    assert result.stdout.strip() == f"1 cannot write {unit_dir}: installing a service needs root (try sudo)"


def test_uninstall_stops_disables_and_removes(unit_dir: Path, booted: Path) -> None:
    """uninstall stops and disables the unit, deletes it, then reloads systemd."""
    install_service("tentacle", executable=EXECUTABLE, user="nobody", unit_dir=unit_dir, run=Recorder())
    recorder = Recorder()
    name = uninstall_service("tentacle", unit_dir=unit_dir, run=recorder, booted_marker=booted)
    assert name == "tentacle"
    assert list(unit_dir.iterdir()) == []
    assert recorder.calls == [
        ["systemctl", "stop", "tentacle.service"],
        ["systemctl", "disable", "tentacle.service"],
        ["systemctl", "daemon-reload"],
    ]


def test_uninstall_of_a_missing_unit_does_nothing(unit_dir: Path, booted: Path) -> None:
    """Removing a unit that is not installed runs nothing and succeeds."""
    recorder = Recorder()
    uninstall_service("server-shim", home="/srv/x", unit_dir=unit_dir, run=recorder, booted_marker=booted)
    assert recorder.calls == []
