"""A real `server-shim run` process and real `tentacle` processes, driven by their commands.

What the security tests of issue 15 need: every party is the program a user runs, talking
over real mutual TLS on 127.0.0.1. `RealFleet` starts the server (`rigs.instances.Server`),
registers tentacles with `tentacle register` in either mode, runs them, and reads the API.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from rigs.instances import Server, free_ports, stop_process, wait_until


def command(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` to its end (it may fail: callers look at the result)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120, env=env
    )


class RealFleet:
    """One server process and the tentacle processes registered with it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = Server(root / "server")
        self.server.init()
        self.tentacles: dict[str, subprocess.Popen[bytes]] = {}

    def start_server(self) -> None:
        """`server-shim run` (once `server.started` is logged)."""
        self.server.start()

    def api_cli(self, *args: str) -> str:
        """A `server-shim` API command on this instance, at the port the server bound; its stdout."""
        return self.server.cli(*args, "--server", self.server.url)

    def home(self, name: str) -> Path:
        """A tentacle's instance folder (named after the machine; `suffix` for a second one)."""
        return self.root / "tentacles" / name

    def register(
        self,
        name: str,
        mode: str,
        token: str,
        *,
        environment: str = "Production",
        role: str = "web",
        force: bool = False,
        home: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`tentacle register` in ``mode`` (listening on a free port, or polling)."""
        where = home or self.home(name)
        transport = ["--polling"] if mode == "polling" else ["--listen", f"127.0.0.1:{free_ports(1)[0]}"]
        argv = [
            "--home",
            str(where),
            "register",
            "--server",
            self.server.url,
            "--token",
            token,
            "--server-thumbprint",
            self.server.cli("show-thumbprint"),
            "--name",
            name,
            "--environment",
            environment,
            "--role",
            role,
            *transport,
            *(["--force"] if force else []),
        ]
        return command("tentacle", *argv)

    def run_tentacle(self, key: str, home: Path | None = None) -> subprocess.Popen[bytes]:
        """`tentacle run` for the instance at ``home`` (default: the one named ``key``)."""
        where = home or self.home(key)
        log = self.root / f"{key}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tentacle", "--home", str(where), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.tentacles[key] = proc
        return proc

    def log(self, key: str) -> str:
        """What a tentacle process has written so far."""
        path = self.root / f"{key}.log"
        return path.read_text() if path.exists() else ""

    def stop_tentacle(self, key: str) -> None:
        """SIGTERM one tentacle and wait for it."""
        stop_process(self.tentacles.pop(key))

    def machines(self) -> dict[str, dict[str, Any]]:
        """The machines list, by name."""
        return {m["name"]: m for m in self.server.call("GET", "/api/Default/machines/v1")["items"]}

    def wait_online(self, name: str, timeout: float = 20.0) -> None:
        """Until the machines list shows ``name`` online."""
        wait_until(
            lambda: self.machines().get(name, {}).get("status") == "online", timeout, what=f"{name} online"
        )

    def task(self, task_id: str) -> dict[str, Any]:
        """GET the task."""
        answer: dict[str, Any] = self.server.call("GET", f"/api/Default/tasks/{task_id}/v1")
        return answer

    def wait_task(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Until the task has ended; its final body."""
        ended: dict[str, Any] = {}

        def done() -> bool:
            ended.update(self.task(task_id))
            return ended["state"] in ("success", "failed", "cancelled")

        wait_until(done, timeout, what=f"task {task_id} ended")
        return ended

    def log_text(self, task_id: str) -> str:
        """Every log line of the task, joined."""
        page = self.server.call("GET", f"/api/Default/tasks/{task_id}/log/v1?since=0")
        return "\n".join(line["text"] for line in page["items"])

    def deploy(self, project: dict[str, Any], environment: str = "Production", version: str = "1.0.0") -> str:
        """Apply ``project``, release it as ``version`` and deploy it; the task id."""
        name = project["name"]
        self.server.call("PUT", f"/api/Default/projects/{name}/v1", project)
        release = {"projectName": name, "releaseVersion": version}
        self.server.call("POST", "/api/Default/releases/create/v1", release)
        body = {"projectName": name, "releaseVersion": version, "environmentNames": [environment]}
        answer = self.server.call("POST", "/api/Default/deployments/create/untenanted/v1", body)
        return str(answer["taskId"])

    def close(self) -> None:
        """Stop every process."""
        for proc in self.tentacles.values():
            stop_process(proc)
        self.tentacles.clear()
        self.server.stop()
