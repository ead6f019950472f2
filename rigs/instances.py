"""Real server and tentacle instances for the scale benchmarks, and their /proc figures.

Everything runs as the user would run it: ``python -m server_shim --home H run`` and
``python -m tentacle --home T run`` as subprocesses on 127.0.0.1, talked to over the
HTTP API with the instance's admin key. Figures come from /proc (psutil is not a
dependency): RSS and peak RSS from ``status``, CPU time from ``stat`` (utime + stime).
``BENCH_SERVER_WRAPPER`` (e.g. a sampling profiler script and its arguments) is put
between the interpreter and ``-m server_shim``, to see where the server spends its time.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server_shim import server_config

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
_STARTED = re.compile(r"server\.started api=(\d+) polling=(\d+)")


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_ports(count: int) -> list[int]:
    """`count` distinct ports nobody listens on right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class ProcStats:
    """One reading of a process: resident and peak resident bytes, CPU seconds so far."""

    rss: int
    peak_rss: int
    cpu_seconds: float


def proc_stats(pid: int) -> ProcStats:
    """Read /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat (utime + stime)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    ticks = int(after_name[11]) + int(after_name[12])  # fields 14 and 15 of stat(5)
    return ProcStats(_kib(fields["VmRSS"]), _kib(fields["VmHWM"]), ticks / CLK_TCK)


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024


def bound_ports(log_text: str) -> tuple[int, int] | None:
    """(api, polling) of the latest ``server.started`` line of a server's output, if any."""
    found = _STARTED.findall(log_text)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.25, what: str = "") -> float:
    """Poll `check` until true; returns the seconds it took; RuntimeError after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"not within {timeout:.0f} s: {what or check}")
        time.sleep(every)
    return time.monotonic() - start


def python(module: str, *args: str) -> list[str]:
    """The command line of ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def run_cli(module: str, *args: str) -> str:
    """Run a command to its end; returns its stdout (RuntimeError with stderr on failure)."""
    done = subprocess.run(python(module, *args), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0, *, signalled: bool = False) -> float:
    """SIGTERM (unless `signalled` already), wait (SIGKILL after `timeout`); the seconds it took.

    One SIGTERM only: a second one tells a tentacle to exit at once, not gracefully.
    """
    start = time.monotonic()
    if proc.poll() is None:
        if not signalled:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return time.monotonic() - start


class Server:
    """A server-shim instance: its home, its two ports, and its process while it runs.

    The first start binds port 0 and reads the ports from the server's output; a restart asks
    for the same ones, where the tentacles look for it.
    """

    def __init__(self, home: Path, database: str = "", node: str = "") -> None:
        self.home = home
        self.database, self.node = database, node  # a postgresql:// URL (else SQLite); a node name
        self.api_port = self.polling_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def polling_url(self) -> str:
        """Where polling tentacles connect."""
        return f"wss://127.0.0.1:{self.polling_port}/poll/v1"

    @property
    def pid(self) -> int:
        """The running server's process id."""
        assert self.proc is not None, "the server is not running"
        return self.proc.pid

    @property
    def log(self) -> Path:
        """The output of the latest start."""
        return self.home.parent / f"{self.home.name}-{self.starts}.log"  # one file per home, nodes too

    def init(self) -> None:
        """`server-shim init` on 127.0.0.1, port 0 for both sites."""
        ports = ["--listen", "127.0.0.1:0", "--polling-listen", "127.0.0.1:0"]
        more = ["--database", self.database] if self.database else []
        run_cli("server_shim", "--home", str(self.home), "init", *ports, *more)

    def cli(self, *args: str) -> str:
        """A `server-shim` command on this instance; its stdout stripped."""
        return run_cli("server_shim", "--home", str(self.home), *args).strip()

    def start(self, timeout: float = 60.0) -> float:
        """`server-shim run` in the background; returns the seconds until it served."""
        self.starts += 1
        start = time.monotonic()
        argv = python(
            "server_shim", "--home", str(self.home), "run", *(["--node", self.node] * bool(self.node))
        )
        if self.api_port:
            argv += ["--listen", f"127.0.0.1:{self.api_port}"]
            argv += ["--polling-listen", f"127.0.0.1:{self.polling_port}"]
        wrapper = os.environ.get("BENCH_SERVER_WRAPPER")  # e.g. a sampling profiler: WRAPPER -m ...
        if wrapper:
            argv[1:1] = wrapper.split()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or bound_ports(self.log.read_text()) is not None, timeout)
        ports = bound_ports(self.log.read_text())
        if proc.poll() is not None or ports is None:
            raise RuntimeError(f"the server exited at start: {self.log.read_text()[-2000:]}")
        self.api_port, self.polling_port = ports
        return time.monotonic() - start

    def stop(self) -> float:
        """SIGTERM; returns the seconds until the process exited."""
        if self.proc is None:
            return 0.0
        seconds = stop_process(self.proc)
        self.proc = None
        return seconds

    def stats(self) -> ProcStats:
        """/proc figures of the running server."""
        return proc_stats(self.pid)

    def admin_key(self) -> str:
        """The admin API key written by init."""
        return (self.home / server_config.ADMIN_KEY_FILE).read_text().strip()

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        """One API request as the admin; returns (status, decoded JSON body)."""
        ctx = ssl.create_default_context(cafile=str(self.home / server_config.CA_CERT))
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", self.api_port, context=ctx, timeout=timeout)
        headers = {"X-Api-Key": self.admin_key(), "Content-Type": "application/json"}
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read() or b"null")
        finally:
            conn.close()

    def call(self, method: str, path: str, body: Any = None, expect: Iterable[int] = (200, 201)) -> Any:
        """An API request that must succeed; returns its body."""
        status, answer = self.api(method, path, body)
        if status not in tuple(expect):
            raise RuntimeError(f"{method} {path} answered {status}: {answer}")
        return answer

    def online(self) -> int:
        """How many machines the machines list shows online."""
        items = self.call("GET", "/api/Default/machines/v1")["items"]
        return sum(1 for item in items if item["status"] == "online")

    def deploy_trivial_step(self, environment: str, role: str) -> str:
        """Apply a one-step project (``echo hi``) and release it; returns the release version."""
        doc = {
            "name": "Bench",
            "steps": [{"name": "Hello", "roles": [role], "script": {"syntax": "bash", "body": "echo hi"}}],
        }
        self.call("PUT", "/api/Default/projects/Bench/v1", doc)
        self.call(
            "POST", "/api/Default/releases/create/v1", {"projectName": "Bench", "releaseVersion": "1.0.0"}
        )
        return "1.0.0"


class Tentacles:
    """Real tentacle processes in polling mode, registered with the real command."""

    def __init__(self, root: Path, server: Server) -> None:
        self.root, self.server = root, server
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def home(self, name: str) -> Path:
        """A tentacle's instance folder."""
        return self.root / name

    def register(self, names: list[str], environment: str, role: str) -> None:
        """`tentacle register --polling` for each name, concurrently."""
        token = self.server.cli("token", "create", "--uses", str(len(names)))
        thumbprint = self.server.cli("show-thumbprint")
        common = ["--server", self.server.url, "--token", token, "--server-thumbprint", thumbprint]
        common += ["--environment", environment, "--role", role, "--polling"]
        procs = [
            subprocess.Popen(
                python("tentacle", "--home", str(self.home(n)), "register", *common, "--name", n),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for n in names
        ]
        for name, proc in zip(names, procs, strict=True):
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"tentacle register {name} exited {proc.returncode}: {err.decode()}")

    def start(self, names: list[str]) -> None:
        """`tentacle run` for each name, in the background."""
        for name in names:
            with (self.root / f"{name}.log").open("wb") as out:
                self.procs[name] = subprocess.Popen(
                    python("tentacle", "--home", str(self.home(name)), "run"),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )

    def stop_all(self) -> None:
        """SIGTERM every tentacle and wait for it."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            stop_process(proc, signalled=True)
        self.procs.clear()


def print_table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    """A readable table: benchmark figure, value, target, met."""
    header = ("figure", "value", "target", "met")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    print(f"\n{title}")
    for row in [header, *rows]:
        print("  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    sys.stdout.flush()


def mib(value: int) -> float:
    """Bytes in MiB, rounded to 0.1."""
    return round(value / MIB, 1)
