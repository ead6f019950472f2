"""A booted Debian bookworm container for the boot test: build it, boot it, run commands in it.

How it works:

- `debian_root` runs debootstrap once and keeps the result under
  ``/var/cache/tentacle-tests/bookworm-root-<hash>``, the hash taken over the suite, the
  variant and the package list, so changing the list builds a new root. It is built beside
  its final name and renamed into place, so an interrupted build leaves nothing half made.
- `build_wheels` copies the project and builds its wheel and its dependencies' wheels
  *outside*: the container has no network, it installs them with ``--no-index``.
- `booted` boots the cached root with ``systemd-nspawn -b --volatile=overlay``: every write
  lands in a tmpfs layer, so the cache stays clean and each run starts from a fresh boot.

Why the unusual nspawn flags: on these machines PID 1 is not systemd and no system bus
runs, so nspawn can neither ask systemd for a scope nor register with systemd-machined
(plain ``systemd-nspawn -b`` stops at "Failed to open system bus: No such file or
directory"). ``--keep-unit --register=no`` skip both; nspawn then makes its cgroups under
its own, so we give it one of ours (and remove it afterwards). Without machined,
``machinectl shell`` and ``systemd-run -M`` cannot reach the container, so `Container.run`
enters its namespaces with nsenter. ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`` gives the
container the pure cgroup v2 tree a real bookworm host has, although this host is hybrid.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tentacle.errors import TentacleError

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates")
CACHE = Path("/var/cache/tentacle-tests")
TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"}
SHARE = "/mnt/tentacle"  # where the host folder with the wheels appears inside, read-only
VENV = "/opt/tentacle"
_INSIDE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
_NOT_COPIED = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".demo", ".hypothesis")


class BootError(TentacleError):
    """The container could not be built, booted or driven; the message says which step."""


def tool(name: str) -> str | None:
    """A tool's path, looking in the sbin folders too (a non-login root PATH may lack them)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def require_tools() -> None:
    """Fail, naming the packages to install, unless we are root with the boot test's tools."""
    missing = sorted({package for name, package in TOOLS.items() if tool(name) is None})
    if missing:
        raise BootError(f"the boot test needs: apt-get install {' '.join(missing)}")
    if os.geteuid() != 0:
        raise BootError("the boot test needs root (debootstrap and systemd-nspawn)")


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian archive this host's apt uses: the first URI that serves a release suite."""
    for path in sorted((sources / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(_deb822_field(line) for line in stanza.splitlines() if ":" in line)
            suites = fields.get("Suites", "").split()
            if "deb" in fields.get("Types", "").split() and any("-" not in s for s in suites):
                return fields["URIs"].split()[0]
    for line in _lines(sources / "sources.list"):
        words = [w for w in line.split() if not w.startswith("[")]
        if len(words) >= 3 and words[0] == "deb" and "-" not in words[2]:
            return words[1]
    raise BootError(f"no Debian archive found in {sources}/sources.list*: debootstrap needs one")


def _deb822_field(line: str) -> tuple[str, str]:
    """One ``Key: value`` line of a deb822 stanza."""
    key, _, value = line.partition(":")
    return key.strip(), value.strip()


def _lines(path: Path) -> list[str]:
    """The lines of a file that may not exist."""
    return path.read_text().splitlines() if path.exists() else []


def debian_root(cache: Path = CACHE) -> Path:
    """The cached bookworm root for `PACKAGES`, built with debootstrap when missing."""
    key = hashlib.sha256(json.dumps([SUITE, VARIANT, PACKAGES]).encode()).hexdigest()[:12]
    root = cache / f"{SUITE}-root-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    # Two test runs at once must not both debootstrap into the same place.
    with (cache / f"{SUITE}-root.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.exists():
            _debootstrap(root)
    return root


def _debootstrap(root: Path) -> None:
    """Build the root beside its final name, then rename it into place."""
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [
        tool("debootstrap") or "debootstrap",
        f"--variant={VARIANT}",
        "--include=" + ",".join(PACKAGES),
        SUITE,
        str(partial),
        apt_mirror(),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise BootError(f"debootstrap failed (exit {done.returncode}): {_tail(done.stdout + done.stderr)}")
    partial.rename(root)


def build_wheels(project: Path, wheels: Path) -> None:
    """Copy the project and build its wheel and its dependencies' into ``wheels``."""
    source = wheels.with_name(wheels.name + "-source")
    shutil.copytree(project, source, ignore=shutil.ignore_patterns(*_NOT_COPIED))
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", str(source), "-w", str(wheels)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise BootError(f"pip wheel failed (exit {done.returncode}): {_tail(done.stderr)}")


@dataclass
class Container:
    """A booted container: its nspawn process, its PID 1 (as the host sees it), its console log."""

    name: str
    nspawn: subprocess.Popen[bytes]
    leader: int
    console: Path

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside as root, in all the container's namespaces, with a clean environment."""
        command = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *_INSIDE_ENV, *argv]
        done = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise BootError(
                f"in {self.name}: {' '.join(argv)} exited {done.returncode}: "
                f"{_tail(done.stderr or done.stdout)}"
            )
        return done

    def write(self, path: str, text: str) -> None:
        """Write a text file inside the container, making its folder."""
        self.run("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path, stdin=text)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` of some properties of a unit, as a dict."""
        done = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        pairs = (line.partition("=") for line in done.stdout.splitlines() if line)
        return {key: value for key, _, value in pairs}

    def journal(self, *args: str, after: str) -> list[dict[str, object]]:
        """Journal entries inside (``journalctl -o json ARGS``) that came after cursor ``after``.

        Not ``--after-cursor``: journalctl 252 combined with ``-p`` drops the first match.
        """
        done = self.run("journalctl", "--no-pager", "-o", "json", f"--cursor={after}", *args)
        entries = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        return [entry for entry in entries if entry["__CURSOR"] != after]

    def cursor(self) -> str:
        """The journal's current end, for reading only what comes after it."""
        done = self.run("journalctl", "--no-pager", "-n", "0", "--show-cursor")
        return done.stdout.strip().rpartition("-- cursor: ")[2]


@contextlib.contextmanager
def booted(root: Path, share: Path, name: str, console: Path) -> Iterator[Container]:
    """Boot ``root`` (changes go to a throwaway overlay), ``share`` read-only at `SHARE`."""
    cgroups = _own_cgroups(name)
    argv = [
        "systemd-nspawn",
        "--quiet",
        f"--directory={root}",
        f"--machine={name}",
        "--boot",
        "--keep-unit",
        "--register=no",
        "--volatile=overlay",
        "--private-network",
        f"--bind-ro={share}:{SHARE}",
    ]
    env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
    with console.open("wb") as log:
        # preexec_fn: nspawn must start inside our cgroups, before it makes its own below.
        nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: _join(cgroups),
        )
    try:
        container = Container(name, nspawn, _leader(nspawn, console), console)
        _wait_for_boot(container)
        yield container
    finally:
        _poweroff(nspawn)
        _remove_cgroups(cgroups)


def install_project(container: Container) -> None:
    """Install the project inside from the shared wheels, its commands in /usr/local/bin."""
    container.run("python3", "-m", "venv", VENV)
    pip = [f"{VENV}/bin/pip", "install", "--quiet", "--no-index", f"--find-links={SHARE}/wheels"]
    container.run(*pip, "tentacle", timeout=300)
    for command in ("tentacle", "server-shim"):
        container.run("ln", "-sf", f"{VENV}/bin/{command}", f"/usr/local/bin/{command}")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until it is true; return the seconds it took; BootError after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise BootError(f"not within {timeout} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - start


def _own_cgroups(name: str) -> list[Path]:
    """A fresh cgroup for nspawn in each mounted hierarchy it uses (pure v2, or hybrid)."""
    base = Path("/sys/fs/cgroup")
    hierarchies = [base] if (base / "cgroup.controllers").exists() else [base / "unified", base / "systemd"]
    cgroups = [h / name for h in hierarchies if (h / "cgroup.procs").exists()]
    for cgroup in cgroups:
        cgroup.mkdir(exist_ok=True)
    return cgroups


def _join(cgroups: list[Path]) -> None:
    """Move the calling process into ``cgroups`` (runs in the child between fork and exec)."""
    for cgroup in cgroups:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))


def _leader(nspawn: subprocess.Popen[bytes], console: Path) -> int:
    """The container's PID 1 as the host sees it: nspawn's child, once it is systemd.

    Entering it earlier could find its mounts half made (or the host's root still).
    """
    found: list[int] = []

    def child() -> bool:
        if nspawn.poll() is not None:
            raise BootError(f"systemd-nspawn exited {nspawn.returncode}: {_tail(console.read_text())}")
        found[:] = [pid for pid in _children(nspawn.pid) if _command(pid) == "systemd"]
        return bool(found)

    wait_until(child, 30, "systemd-nspawn starts the container")
    return found[0]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name may hold spaces; the fields after its ')' do not.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _command(pid: int) -> str:
    """A process's command name, or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _wait_for_boot(container: Container) -> None:
    """Wait until systemd inside finished starting up (running, or degraded: say which units)."""

    def finished() -> bool:
        if container.nspawn.poll() is not None:
            raise BootError(f"the container stopped while booting: {_tail(container.console.read_text())}")
        state = container.run("systemctl", "is-system-running", "--wait", check=False, timeout=60)
        return state.stdout.strip() in ("running", "degraded")

    wait_until(finished, 90, "the container boots")
    failed = container.run("systemctl", "--failed", "--plain", "--no-legend", check=False).stdout
    if failed.strip():
        print(f"{container.name} booted degraded; failed units:\n{failed}")  # shown with a failure


def _poweroff(nspawn: subprocess.Popen[bytes]) -> None:
    """Shut the container down cleanly (nspawn turns SIGTERM into a poweroff), or kill it."""
    if nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)
        try:
            nspawn.wait(30)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(10)


def _remove_cgroups(cgroups: list[Path]) -> None:
    """Remove our cgroups, deepest first; a cgroup empties a moment after its last process."""
    for cgroup in cgroups:
        for attempt in range(50):
            try:
                for directory, _, _ in os.walk(cgroup, topdown=False):
                    os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError:
                if attempt == 49:
                    raise
                time.sleep(0.1)


def _tail(text: str, lines: int = 20) -> str:
    """The last lines of a command's output, for an error message."""
    return "\n".join(text.strip().splitlines()[-lines:])
