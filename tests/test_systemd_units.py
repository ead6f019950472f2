"""The systemd side: unit files (checked by systemd's own tools), service install,
sd_notify over real datagram sockets, and journald-friendly log lines.

The sandbox test runs CPython under the unit's own system call filter and
MemoryDenyWriteExecute, applied with libseccomp as systemd applies them, so a setting
that would break the daemon fails here rather than on a target host.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

from tentacle.common import sdnotify
from tentacle.common.logs import event, format_fields
from tentacle.common.units import (
    ServiceError,
    default_units,
    install_service,
    render_unit,
    uninstall_service,
)
from tentacle.errors import ConfigError, UsageError

REPO = Path(__file__).resolve().parent.parent
EXECUTABLE = sys.executable  # verify needs ExecStart= to name a real program


class Profile(NamedTuple):
    """One way to render a unit, and the exposure score it must stay within."""

    program: str
    threshold: float
    home: str | None = None
    as_root: bool = False
    executable: tuple[str, ...] = (EXECUTABLE,)


PROFILES = {
    "tentacle": Profile("tentacle", 2.0),
    "tentacle-root": Profile("tentacle", 5.0, as_root=True),
    "server-shim": Profile("server-shim", 2.0),
    "tentacle-in-home": Profile("tentacle", 2.0, home="/home/alice/blue 100%"),
    "tentacle-in-srv": Profile("tentacle", 2.0, home="/srv/tentacle/green"),
    "tentacle-as-module": Profile("tentacle", 2.0, executable=(EXECUTABLE, "-m", "tentacle")),
}


def _write_unit(directory: Path, profile: str) -> Path:
    """Render a profile with a real executable into ``directory``."""
    options = PROFILES[profile]
    text = render_unit(
        options.program, executable=options.executable, home=options.home, as_root=options.as_root
    )
    path = directory / f"{profile}.service"
    path.write_text(text)
    return path


def _directives(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit, in order, keys that repeat keeping each value."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


# --- unit files, judged by systemd ------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, profile: str) -> None:
    """systemd-analyze verify accepts every rendered profile without a warning."""
    path = _write_unit(tmp_path, profile)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_exposure_is_within_threshold(tmp_path: Path, profile: str) -> None:
    """systemd-analyze security --offline rates each profile within its exposure target."""
    path = _write_unit(tmp_path, profile)
    command = ["systemd-analyze", "security", "--offline=true", "--no-pager"]
    table = subprocess.run([*command, "--json=short", str(path)], capture_output=True, text=True, check=True)
    open_items = [row["name"] for row in json.loads(table.stdout) if row["set"] is False]
    summary = subprocess.run([*command, str(path)], capture_output=True, text=True, check=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", summary.stdout)
    assert match, summary.stdout
    assert float(match.group(1)) <= PROFILES[profile].threshold, open_items


def test_static_units_match_render_unit() -> None:
    """systemd/*.service are exactly what render_unit gives for the default paths."""
    for name, text in default_units().items():
        assert (REPO / "systemd" / name).read_text() == text, f"regenerate systemd/{name}"
    assert len(default_units()) == 3


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_unit_carries_the_service_contract(tmp_path: Path, profile: str) -> None:
    """Every profile is Type=notify with a watchdog, no restart on exit 78, a bounded stop."""
    values = _directives(_write_unit(tmp_path, profile).read_text())
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30"],
        "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["78"],
        "KillMode": ["mixed"],
        "TimeoutStopSec": ["60"],
        "ExecReload": ["/bin/sh -c 'kill -HUP $$MAINPID'"],
        "SystemCallErrorNumber": ["EPERM"],
        "After": ["network-online.target"],
        "Wants": ["network-online.target"],
    }
    assert {key: values.get(key) for key in expected} == expected
    program = PROFILES[profile].program
    for kind in ("State", "Cache", "Configuration", "Logs"):
        assert values[f"{kind}Directory"] == [program]


def test_home_instance_runs_with_its_home_and_can_write_it() -> None:
    """A --home instance passes it (quoted, % escaped) to `run` and may write it."""
    text = render_unit("tentacle", executable="/opt/t/bin/tentacle", home="/srv/my t/100%")
    values = _directives(text)
    assert values["ExecStart"] == ['/opt/t/bin/tentacle --home "/srv/my t/100%%" run']
    assert values["ReadWritePaths"] == ['"/srv/my t/100%%"']
    assert values["ProtectSystem"] == ["strict"]
    assert values["SyslogIdentifier"] == ["tentacle-100"]


def test_root_profile_can_install_software() -> None:
    """The root profile leaves /usr, /etc, /opt and /var writable and keeps JITs working."""
    values = _directives(render_unit("tentacle", executable="/t", as_root=True))
    for fence in (
        "ProtectSystem",
        "ProtectHome",
        "ReadOnlyPaths",
        "User",
        "MemoryDenyWriteExecute",
    ):
        assert fence not in values
    assert values["UMask"] == ["0022"]
    assert values["CapabilityBoundingSet"][0].startswith("~CAP_SYS_ADMIN ")


def test_render_refuses_what_a_unit_cannot_express() -> None:
    """Relative paths, newlines, root server shims and root-with-user are usage errors."""
    with pytest.raises(UsageError, match="absolute"):
        render_unit("tentacle", executable="bin/tentacle")
    with pytest.raises(UsageError, match="cannot carry"):
        render_unit("tentacle", executable="/bin/x", home="/srv/a\nb")
    with pytest.raises(UsageError, match="no root profile"):
        render_unit("server-shim", executable="/bin/x", as_root=True)
    with pytest.raises(UsageError, match="exclude"):
        render_unit("tentacle", executable="/bin/x", as_root=True, user="deploy")
    with pytest.raises(UsageError, match="program"):
        render_unit("octopus", executable="/bin/x")


# --- the unit's sandbox, applied to CPython ---------------------------------------------

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000

WORKLOAD = """
import asyncio, mmap, sqlite3, ssl
import aiohttp, trustme, zstandard
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

async def tls_round_trip():
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="pong"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://localhost:{port}/", ssl=client_context) as response:
            print("tls", await response.text())
    await runner.cleanup()
    script = await asyncio.create_subprocess_exec(
        "bash", "-c", "echo step-ran", stdout=asyncio.subprocess.PIPE)
    print("bash", (await script.communicate())[0].decode().strip())

asyncio.run(tls_round_trip())
ec.generate_private_key(ec.SECP256R1())
sqlite3.connect(":memory:").execute("create table t (x)")
print("zstd", len(zstandard.ZstdCompressor().compress(b"x" * 10000)) < 100)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("wx", "allowed")
except OSError as exc:
    print("wx", exc.errno)
status = open("/proc/self/status").read()
print("filters", status.split("Seccomp_filters:")[1].split()[0])
"""


class ScmpArgCmp(ctypes.Structure):
    """libseccomp's ``struct scmp_arg_cmp``: one condition on a system call argument."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _seccomp_library() -> ctypes.CDLL:
    """libseccomp, which systemd itself uses to build its filters."""
    library = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    library.seccomp_init.restype = ctypes.c_void_p
    library.seccomp_init.argtypes = [ctypes.c_uint32]
    library.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ScmpArgCmp),
    ]
    library.seccomp_load.argtypes = [ctypes.c_void_p]
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return library


def _syscall_groups() -> dict[str, list[str]]:
    """systemd's own system call groups (``@system-service`` ...), as this systemd defines them."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif line.startswith(" ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def _expand(names: Sequence[str], groups: dict[str, list[str]]) -> set[str]:
    """System call names of a filter expression's words, groups expanded recursively."""
    calls: set[str] = set()
    for name in names:
        calls |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return calls


def _allowed_calls(unit: dict[str, list[str]]) -> set[str]:
    """What the unit's SystemCallFilter= lines allow: the allow list minus each ~deny list."""
    groups = _syscall_groups()
    allowed: set[str] = set()
    for value in unit["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= _expand(value[1:].split(), groups)
        else:
            allowed |= _expand(value.split(), groups)
    return allowed


def _masked(arg: int, mask: int) -> ScmpArgCmp:
    """The condition ``(argument & mask) == mask``."""
    return ScmpArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, mask)


def _build_filters(library: ctypes.CDLL, unit: dict[str, list[str]]) -> list[int]:
    """seccomp filters equivalent to the unit's settings, as systemd builds them."""
    refuse = 0x00050000 | getattr(errno, unit["SystemCallErrorNumber"][0])
    allow_list = library.seccomp_init(refuse)
    for name in sorted(_allowed_calls(unit)):
        number = library.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:  # groups name calls of other architectures too
            assert library.seccomp_rule_add_array(allow_list, SCMP_ACT_ALLOW, number, 0, None) == 0
    # The allow list goes last, as systemd loads it: it may forbid seccomp() itself.
    filters = [allow_list]
    if unit.get("MemoryDenyWriteExecute") == ["yes"]:
        mdwe = library.seccomp_init(SCMP_ACT_ALLOW)
        rules = {
            "mmap": _masked(2, PROT_WRITE | PROT_EXEC),
            "mprotect": _masked(2, PROT_EXEC),
            "pkey_mprotect": _masked(2, PROT_EXEC),
            "shmat": _masked(2, SHM_EXEC),
        }
        for name, condition in rules.items():
            number = library.seccomp_syscall_resolve_name(name.encode())
            assert library.seccomp_rule_add_array(mdwe, refuse, number, 1, condition) == 0
        filters.insert(0, mdwe)
    return filters


@pytest.mark.parametrize("profile", ["tentacle", "server-shim"])
def test_cpython_runs_under_the_units_syscall_filter_and_mdwe(tmp_path: Path, profile: str) -> None:
    """TLS, subprocesses, sqlite, zstd and keys work under the unit's seccomp and MDWE."""
    unit = _directives(_write_unit(tmp_path, profile).read_text())
    library = _seccomp_library()
    filters = _build_filters(library, unit)
    libc = ctypes.CDLL(None, use_errno=True)

    def confine() -> None:
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, as NoNewPrivileges=yes
        for handle in filters:
            if library.seccomp_load(handle) != 0:
                os._exit(99)

    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    result = subprocess.run(
        [sys.executable, str(script)],
        preexec_fn=confine,  # the filter must be loaded in the child
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    expected = ["tls pong", "bash step-ran", "zstd True", f"wx {errno.EPERM}"]
    assert lines[:4] == expected
    assert lines[4] == f"filters {len(filters)}"


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


# --- logs ---------------------------------------------------------------------------------

LOGGING_SCRIPT = """
import logging
from tentacle.common.logs import event, setup_logging
setup_logging("info")
setup_logging("info")  # a second call must not double every line
log = logging.getLogger("tentacle.test")
event(log, "package.mirror_failed", logging.WARNING, mirror="https://m1", error="timed out")
event(log, "step.started", step="Deploy web")
event(log, "debug.hidden", logging.DEBUG)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("step.crashed")
"""


def _run_logging(tmp_path: Path, *, journal: bool) -> list[str]:
    """Run LOGGING_SCRIPT with stdout to a file, JOURNAL_STREAM naming it or not."""
    output = tmp_path / "stdout"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with output.open("w") as stdout:
        if journal:
            stat = os.fstat(stdout.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        subprocess.run([sys.executable, "-c", LOGGING_SCRIPT], stdout=stdout, env=env, check=True)
    return output.read_text().splitlines()


def test_journal_lines_carry_syslog_priorities(tmp_path: Path) -> None:
    """When stdout is the journal, each line starts with <priority> and has no timestamp."""
    lines = _run_logging(tmp_path, journal=True)
    assert lines[:3] == [
        '<4>package.mirror_failed mirror=https://m1 error="timed out"',
        '<6>step.started step="Deploy web"',
        "<3>step.crashed",
    ]
    assert lines[3] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in lines[3:])
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_terminal_lines_carry_timestamp_and_level(tmp_path: Path) -> None:
    """Elsewhere each event line starts with an ISO timestamp and the level word."""
    lines = _run_logging(tmp_path, journal=False)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
    assert re.fullmatch(stamp + r' WARNING package\.mirror_failed mirror=\S+ error="timed out"', lines[0])
    assert re.fullmatch(stamp + r' INFO step\.started step="Deploy web"', lines[1])
    assert re.fullmatch(stamp + r" ERROR step\.crashed", lines[2])
    assert not any("debug.hidden" in line for line in lines)


def test_fields_are_quoted_only_when_needed() -> None:
    """Plain words stay bare; spaces, quotes, '=', newlines and empties are JSON-quoted."""
    rendered = format_fields(
        a="plain", b="two words", c='say "hi"', d="k=v", e="", f="line\nbreak", g=True, h=3
    )
    assert rendered == ('a=plain b="two words" c="say \\"hi\\"" d="k=v" e="" f="line\\nbreak" g=true h=3')


def test_event_logs_name_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    """event() logs one record whose message is the event name and its fields."""
    with caplog.at_level(logging.INFO, logger="tentacle.test"):
        event(logging.getLogger("tentacle.test"), "package.verified", id="Web", size=10)
    assert [r.getMessage() for r in caplog.records] == ["package.verified id=Web size=10"]
    assert caplog.records[0].funcName == "test_event_logs_name_and_fields"


def test_unknown_log_level_is_a_config_error() -> None:
    """An unknown level is a configuration error (exit 78) naming the choices."""
    from tentacle.common.logs import setup_logging

    with pytest.raises(ConfigError, match="'loud' is not one of debug, info"):
        setup_logging("loud")
