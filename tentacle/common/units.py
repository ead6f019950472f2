"""systemd units for the tentacle and the server shim: rendering, installing, removing.

A unit is rendered from directive groups (lifecycle, directories, sandbox), so the two
profiles share what they can and differ only where root must:

- hardened (default): a dedicated system user, no capabilities, the file system read-only
  except the service's own directories (and ``--home``), a system call allow list,
  ``MemoryDenyWriteExecute``. ``systemd-analyze security`` exposure: about 1.3.
- root (``tentacle service install --as-root``): root, because some deployments install
  software, so ``/usr``, ``/etc``, ``/opt`` and ``/var`` stay writable; still without
  kernel, clock, module, namespace and most capability powers. Exposure: about 4.
  The server shim has no root profile: it never needs one.

systemd/README.md explains each directive; systemd/*.service are these units rendered for
the default paths (``python -m tentacle.common.units systemd/`` writes them again).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tentacle.common.logs import event
from tentacle.errors import TentacleError, UsageError

__all__ = [
    "BOOTED_MARKER",
    "DEFAULT_UNIT_DIR",
    "PROGRAMS",
    "Runner",
    "ServiceError",
    "default_units",
    "install_service",
    "render_unit",
    "run_command",
    "uninstall_service",
    "unit_name",
]

logger = logging.getLogger(__name__)

PROGRAMS = ("tentacle", "server-shim")
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
# sd_booted(3): this directory exists only when systemd is the running init.
BOOTED_MARKER = Path("/run/systemd/system")

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]
Directive = tuple[str, str]

_PROFILE_NAMES = {False: "hardened", True: "root"}

_HOME_PREFIXES = ("/home", "/root", "/run/user")
_ROOT_DROPPED_CAPABILITIES = (
    "CAP_SYS_ADMIN CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_TIME CAP_SYS_BOOT CAP_SYS_PTRACE "
    "CAP_SYS_PACCT CAP_SYS_TTY_CONFIG CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_AUDIT_CONTROL "
    "CAP_AUDIT_READ CAP_SYSLOG CAP_BPF CAP_PERFMON CAP_WAKE_ALARM CAP_BLOCK_SUSPEND "
    "CAP_LINUX_IMMUTABLE CAP_IPC_LOCK CAP_LEASE CAP_MKNOD CAP_CHECKPOINT_RESTORE"
)


class ServiceError(TentacleError):
    """Installing or removing the systemd service failed (not root, systemctl refused)."""


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; the default ``run`` of install and uninstall."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def unit_name(program: str, home: str | None) -> str:
    """The unit's name: the program's, plus the home's basename for a non-default home."""
    _check_program(program)
    if home is None:
        return program
    suffix = re.sub(r"[^A-Za-z0-9_.]+", "-", Path(home).name).strip("-.")
    if not suffix:
        raise UsageError(f"home: cannot name a unit after {home!r}")
    return f"{program}-{suffix}"


def render_unit(
    program: str,
    *,
    executable: str | Sequence[str],
    home: str | None = None,
    user: str | None = None,
    as_root: bool = False,
    description: str | None = None,
) -> str:
    """The text of the unit file for one instance of ``program``.

    ``user`` defaults to the program's name; ``as_root`` selects the root profile (tentacle
    only). ``executable`` is the program's path, or the words that start it
    (``[sys.executable, "-m", "tentacle"]``); its first word and ``home`` must be absolute.
    """
    _check_program(program)
    if as_root and program != "tentacle":
        raise UsageError(f"--as-root: {program} has no root profile; it needs no privileges")
    if as_root and user is not None:
        raise UsageError("--as-root and --user exclude each other")
    command = [executable] if isinstance(executable, str) else list(executable)
    _check_path("executable", command[0] if command else "")
    if not all(word.isprintable() for word in command):
        raise UsageError(f"executable: {command!r} has characters a unit file cannot carry")
    if home is not None:
        _check_path("home", home)
    name = unit_name(program, home)
    unit = [
        ("Description", _one_line(description or _description(program, home, as_root))),
        ("After", "network-online.target"),
        ("Wants", "network-online.target"),
    ]
    profile = _root_fence() if as_root else _hardened(user or program, home)
    service = [
        ("Start, readiness, watchdog, restart and stop", _lifecycle(name, command, home)),
        ("Directories systemd creates and passes in $*_DIRECTORY", _directories(program, as_root)),
        ("Root, fenced" if as_root else "Unprivileged, and confined to its own files", profile),
        ("Kernel, clock, namespaces and system calls", _common_sandbox(program)),
    ]
    header = f"# {name}.service: {_PROFILE_NAMES[as_root]} profile. See systemd/README.md.\n"
    return "\n".join(
        [
            header,
            _section("Unit", [("", unit)]),
            _section("Service", service),
            _section("Install", [("", [("WantedBy", "multi-user.target")])]),
        ]
    )


def default_units() -> dict[str, str]:
    """The shipped unit files (name -> text), rendered for the default install paths."""
    return {
        "tentacle.service": render_unit("tentacle", executable="/usr/local/bin/tentacle"),
        "tentacle-root.service": render_unit("tentacle", executable="/usr/local/bin/tentacle", as_root=True),
        "server-shim.service": render_unit("server-shim", executable="/usr/local/bin/server-shim"),
    }


def install_service(
    program: str,
    *,
    executable: str | Sequence[str],
    home: str | None = None,
    user: str | None = None,
    as_root: bool = False,
    start: bool = False,
    dry_run: bool = False,
    unit_dir: Path = DEFAULT_UNIT_DIR,
    run: Runner = run_command,
    booted_marker: Path = BOOTED_MARKER,
    instance_dirs: Sequence[Path] = (),
) -> str:
    """Write, enable and optionally start the unit for this instance; return the unit text.

    ``instance_dirs`` (the instance's configuration folder, or its whole home) are handed
    to the service user in the hardened profile: `init` and `register` ran as root and
    left them root-only, and the service could not read its own keys otherwise.

    Creates the service user when it does not exist. ``daemon-reload`` and ``start`` run
    only when systemd is the running init; ``enable`` works without it (image builds).
    With ``dry_run`` nothing happens: the caller prints the text it gets back. The unit's
    name is :func:`unit_name` of the program and home.
    """
    home = str(Path(home).resolve()) if home is not None else None
    text = render_unit(program, executable=executable, home=home, user=user, as_root=as_root)
    name = unit_name(program, home)
    path = unit_dir / f"{name}.service"
    if dry_run:
        return text
    _check_writable(unit_dir)
    if not as_root:
        _ensure_user(user or program, run)
        for directory in instance_dirs:
            hand_over(directory, user or program)
    _write_atomically(path, text)
    booted = booted_marker.exists()
    if booted:
        _systemctl(run, "daemon-reload")
    _systemctl(run, "enable", f"{name}.service")
    if start and booted:
        _systemctl(run, "start", f"{name}.service")
    elif start:
        event(logger, "service.not_started", logging.WARNING, unit=name, reason="no systemd")
    event(logger, "service.installed", unit=name, path=path, started=start and booted)
    return text


def uninstall_service(
    program: str,
    *,
    home: str | None = None,
    unit_dir: Path = DEFAULT_UNIT_DIR,
    run: Runner = run_command,
    booted_marker: Path = BOOTED_MARKER,
) -> str:
    """Stop, disable and delete this instance's unit; return its name.

    Removing a unit that is not installed does nothing. The service user and the
    instance's files stay: they may hold keys and deployed software.
    """
    home = str(Path(home).resolve()) if home is not None else None
    name = unit_name(program, home)
    path = unit_dir / f"{name}.service"
    if not path.exists():
        event(logger, "service.not_installed", unit=name, path=path)
        return name
    _check_writable(unit_dir)
    booted = booted_marker.exists()
    if booted:
        _systemctl(run, "stop", f"{name}.service")
    _systemctl(run, "disable", f"{name}.service")
    path.unlink()
    if booted:
        _systemctl(run, "daemon-reload")
    event(logger, "service.uninstalled", unit=name, path=path)
    return name


def hand_over(directory: Path, user: str) -> None:
    """Make `user` own `directory` and everything in it: folders 0750, files 0640."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise ServiceError(f"user {user!r} does not exist") from exc
    if not directory.exists():
        return
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue  # never follow a link out of the instance's folder
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o750 if path.is_dir() else 0o640)


def _lifecycle(name: str, program: Sequence[str], home: str | None) -> list[Directive]:
    """Start, readiness, watchdog, reload, restart and stop behaviour."""
    command = [*program, *(["--home", home] if home else []), "run"]
    return [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", " ".join(_exec_word(word) for word in command)),
        # /bin/kill is procps, absent from minimal images; the shell's kill is always there.
        ("ExecReload", "/bin/sh -c 'kill -HUP $$MAINPID'"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartSec", "2"),
        ("RestartPreventExitStatus", "78"),
        ("KillMode", "mixed"),
        ("TimeoutStopSec", "60"),
        ("SyslogIdentifier", name),
        ("Environment", "PYTHONUNBUFFERED=1"),
    ]


def _directories(program: str, as_root: bool) -> list[Directive]:
    """Private state, cache and logs; configuration readable by the service user.

    systemd keeps the configuration directory owned by root and read-only for the
    service, so the unprivileged user can read it only if it is not 0700.
    """
    directives: list[Directive] = []
    for kind in ("State", "Cache", "Configuration", "Logs"):
        private = as_root or kind != "Configuration"
        directives += [(f"{kind}Directory", program)]
        directives += [(f"{kind}DirectoryMode", "0700" if private else "0750")]
    return directives


def _hardened(user: str, home: str | None) -> list[Directive]:
    """An unprivileged user with no capabilities that can write only its own directories."""
    in_user_homes = home is not None and _is_under(home, _HOME_PREFIXES)
    directives = [
        ("User", user),
        ("UMask", "0077"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectSystem", "strict"),
        # An instance home under /home stays reachable: an empty /home with it bound in.
        ("ProtectHome", "tmpfs" if in_user_homes else "yes"),
        ("PrivateDevices", "yes"),
        ("PrivateUsers", "yes"),
        ("PrivateIPC", "yes"),
        ("RemoveIPC", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ]
    if home is not None:
        directives.append(("BindPaths" if in_user_homes else "ReadWritePaths", _path_word(home)))
    return directives


def _root_fence() -> list[Directive]:
    """Root that can still install software, without the powers deployments never need."""
    return [
        ("CapabilityBoundingSet", "~" + _ROOT_DROPPED_CAPABILITIES),
        ("AmbientCapabilities", ""),
        # What a root deployment installs is for other users to read.
        ("UMask", "0022"),
        # /dev/net/tun: a pre-acquisition step may open a VPN. Netlink: `ip`, VPN clients.
        ("DeviceAllow", "/dev/net/tun rw"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ]


def _common_sandbox(program: str) -> list[Directive]:
    """The fence both profiles share: kernel, clock, namespaces, system calls."""
    directives = [
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateMounts", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("LockPersonality", "yes"),
        ("DevicePolicy", "closed"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallErrorNumber", "EPERM"),
    ]
    if program == "server-shim":
        # The server runs no deployment scripts, so it can give up even these.
        directives.append(("SystemCallFilter", "~@privileged @resources"))
    return directives


def _section(name: str, groups: Sequence[tuple[str, Sequence[Directive]]]) -> str:
    """One ``[Section]`` block of directive groups, each under its comment; ends in a newline."""
    lines = [f"[{name}]"]
    for comment, directives in groups:
        lines += [f"# {comment}"] if comment else []
        lines += [f"{key}={value}" for key, value in directives]
    return "\n".join(lines) + "\n"


def _description(program: str, home: str | None, as_root: bool) -> str:
    """The default Description= of a program's unit: what it is, and which instance."""
    what = "Tentacle server shim" if program == "server-shim" else "Tentacle deployment agent"
    profile = " as root" if as_root else ""
    return f"{what}{profile} ({home})" if home else what + profile


def _one_line(text: str) -> str:
    """Free text for a directive: one line, with specifier characters escaped."""
    return " ".join(text.split()).replace("%", "%%")


def _check_program(program: str) -> None:
    """Refuse a program this module has no unit for."""
    if program not in PROGRAMS:
        raise UsageError(f"program: {program!r} is not one of {', '.join(PROGRAMS)}")


def _check_path(what: str, value: str) -> None:
    """Refuse paths a unit file cannot carry: relative, or with control characters or ':'."""
    if not value.startswith("/"):
        raise UsageError(f"{what}: {value!r} must be an absolute path")
    if not value.isprintable() or ":" in value:
        raise UsageError(f"{what}: {value!r} has characters a unit file cannot carry")


def _exec_word(word: str) -> str:
    """One ExecStart= argument, escaped so systemd passes it through unchanged."""
    word = word.replace("%", "%%")  # specifiers
    if re.fullmatch(r"[A-Za-z0-9_./+,@=%-]+", word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{escaped}"'


def _path_word(path: str) -> str:
    """A path for ReadWritePaths= and BindPaths=: specifiers escaped, quoted when needed."""
    path = path.replace("%", "%%")
    if re.fullmatch(r"[A-Za-z0-9_./+,@=%-]+", path):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_under(path: str, prefixes: Sequence[str]) -> bool:
    """Whether ``path`` is one of ``prefixes`` or inside one."""
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _check_writable(unit_dir: Path) -> None:
    """Fail early, and clearly, when we may not change the unit directory."""
    if not os.access(unit_dir, os.W_OK):
        raise ServiceError(
            f"cannot write {unit_dir}: installing a service needs root (try sudo)",
            details={"unitDir": str(unit_dir)},
        )


def _ensure_user(name: str, run: Runner) -> None:
    """Create ``name`` as a system user without a home or login shell, if it is missing."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        _check_result(run(argv), argv)
        event(logger, "service.user_created", user=name)


def _systemctl(run: Runner, *args: str) -> None:
    """Run one systemctl command, failing with its own message."""
    argv = ["systemctl", *args]
    _check_result(run(argv), argv)


def _check_result(result: subprocess.CompletedProcess[str], argv: Sequence[str]) -> None:
    """Turn a failed command into a ServiceError that says what failed and why."""
    if result.returncode != 0:
        reason = (result.stderr or result.stdout or "").strip() or "no output"
        raise ServiceError(
            f"{' '.join(argv)} failed (exit {result.returncode}): {reason}",
            details={"command": list(argv), "exitCode": result.returncode},
        )


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so systemd never reads half a unit."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o644)
    os.replace(temporary, path)


def _write_static_units(directory: Path) -> None:
    """Write the shipped unit files into ``directory``."""
    for name, text in default_units().items():
        (directory / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    _write_static_units(Path(sys.argv[1] if len(sys.argv) > 1 else "systemd"))
