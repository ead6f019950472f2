"""The systemd unit files, checked by systemd's own tools (service install:
tests/test_service_install.py; sd_notify: tests/test_sd_notify.py; log lines:
tests/test_log_lines.py).

The sandbox test runs CPython under the unit's own system call filter and
MemoryDenyWriteExecute, applied with libseccomp as systemd applies them, so a setting
that would break the daemon fails here rather than on a target host.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

from tentacle.common.units import default_units, render_unit
from tentacle.errors import UsageError
from tests.units_helpers import EXECUTABLE, _directives

REPO = Path(__file__).resolve().parent.parent


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
