"""Acquisition across kill -9: of the server mid-transfer, and of the tentacle mid-download.

Real processes: `server-shim run` and `tentacle run` as subprocesses, a 16 MiB package in
the server's feed, and our fault proxy as a 2 MiB/s link in front of the transfer (the
server's feed for a polling tentacle, the tentacle's port for a listening one), so that a
kill lands while the bytes flow. The promises: the deployment succeeds once the killed
process is back, its step runs once, the partial is resumed rather than fetched again,
and what the killed tentacle left in its cache and work folder is gone after its start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rigs.faultproxy import FaultProxy
from tentacle.agent import agent_config as config
from tentacle.agent import registration
from tentacle.agent.agent_config import ListenConfig
from tentacle.agent.listening import report_port
from tentacle.common.paths import InstancePaths, resolve
from tests.conftest import run_tentacle, tentacle_context
from tests.deploying import step
from tests.test_faults import ServerProcess

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
RATE = 2 * MiB  # bytes per second through the slow link
README = b"sixteen mebibytes, resumed"


def package_file(folder: Path) -> Path:
    """Big.1.0.0.zip: a readme and 16 MiB of random bytes, stored (so the file is 16 MiB too)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("readme.txt", README)
        archive.writestr("payload.bin", os.urandom(16 * MiB))
    path = folder / "Big.1.0.0.zip"
    path.write_bytes(out.getvalue())
    return path


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    """Wait until ``check()`` holds (polling every 50 ms); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if await found if isinstance(found, Awaitable) else found:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


@dataclasses.dataclass
class Site:
    """A server process, a tentacle process behind a slow link, and their files."""

    root: Path
    mode: str
    server: ServerProcess
    link: FaultProxy
    paths: InstancePaths
    package: Path
    tentacle: subprocess.Popen[bytes] | None = None

    @property
    def marks(self) -> Path:
        """Each run of the step appends a line here."""
        return self.root / "ran"

    @property
    def tentacle_log(self) -> Path:
        """What `tentacle run` printed, every run appended."""
        return self.root / "tentacle.log"

    @functools.cached_property
    def partial(self) -> Path:
        """The package's partial download on the tentacle."""
        sha512 = hashlib.sha512(self.package.read_bytes()).hexdigest()
        return self.paths.state / "packages" / "partial" / f"{sha512}.part"

    async def start_tentacle(self) -> None:
        """`tentacle run` as a process of its own; a listening one is then reached through the link."""
        reported = (
            self.tentacle_log.read_text().count("listening.reported") if self.tentacle_log.exists() else 0
        )
        self.tentacle = run_tentacle(self.paths.config, self.tentacle_log)  # the home, with --home
        if self.mode == "listening":  # it reports the port it bound; then the server is told the link's
            log = self.tentacle_log
            await eventually(
                lambda: log.read_text().count("listening.reported") > reported,
                30,
                "port reported",
            )
            # The port this start bound, from its log line (the state file is written in the background).
            [*_, port] = re.findall(r"listening\.started\b.*?\bport=(\d+)", log.read_text())
            self.link.retarget("127.0.0.1", int(port))
            endpoint = await report_port(
                self.server.url,
                [await self.server.cli("show-thumbprint")],
                tentacle_context(self.paths),
                self.link.port,
            )
            assert endpoint == f"https://127.0.0.1:{self.link.port}"

    async def kill_tentacle(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the tentacle and wait for it to end."""
        assert self.tentacle is not None
        self.tentacle.send_signal(sig)
        await asyncio.to_thread(self.tentacle.wait, 20)

    def connected(self) -> bool:
        """Whether the running tentacle process says (state/connection.json) it is connected."""
        assert self.tentacle is not None
        try:
            state = json.loads((self.paths.state / "connection.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(state["pid"] == self.tentacle.pid and state["state"] == "connected")

    async def online(self) -> bool:
        """Whether the server sees the tentacle online."""
        items = (await self.server.api("GET", "/api/Default/machines/v1"))["items"]
        return bool(items) and items[0]["status"] == "online"

    async def deploy(self) -> str:
        """A one-step deployment of the package; returns the task id."""
        body = f'echo ran >> {self.marks}; head -c {len(README)} "$PACKAGE_DIR/readme.txt"; echo'
        process = {"name": "Big", "steps": [{**step("Web", body), "package": {"id": "Big"}}]}
        await self.server.api("PUT", "/api/Default/projects/Big/v1", process)
        release = {"projectName": "Big", "releaseVersion": "1.0.0"}
        await self.server.api("POST", "/api/Default/releases/create/v1", release)
        deployment = {**release, "environmentNames": ["Dev"]}
        created = await self.server.api("POST", "/api/Default/deployments/create/untenanted/v1", deployment)
        return str(created["taskId"])

    async def ended(self, task_id: str) -> dict[str, Any] | None:
        """The task once it ended, else None."""
        task: dict[str, Any] = await self.server.api("GET", f"/api/Default/tasks/{task_id}/v1")
        return task if task["state"] in ("success", "failed", "cancelled") else None

    async def log_texts(self, task_id: str) -> list[str]:
        """The task's log as the server stored it."""
        page = await self.server.api("GET", f"/api/Default/tasks/{task_id}/log/v1?since=0")
        return [line["text"] for line in page["items"]]

    def downloads(self) -> list[dict[str, str]]:
        """The tentacle's ``package.downloaded`` events, as key=value fields."""
        found = []
        for line in self.tentacle_log.read_text(errors="replace").splitlines():
            if "package.downloaded" in line:
                found.append(dict(field.split("=", 1) for field in line.split() if "=" in field))
        return found


async def _register(server: ServerProcess, root: Path, mode: str, link: FaultProxy) -> InstancePaths:
    """Register the tentacle; the transfer's way between them crosses ``link``."""
    paths = resolve("tentacle", str(root / "web-01"))
    listen = ListenConfig(host="127.0.0.1", port=0) if mode == "listening" else None
    reg = registration.Registration(
        server=server.url,
        token=await server.cli("token", "create"),
        server_thumbprint=await server.cli("show-thumbprint"),
        name="web-01",
        environments=("Dev",),
        roles=("web",),
        listen=listen,
    )
    await registration.register(paths, reg)
    if mode == "polling":  # the tentacle fetches from the server's feed through the link
        conf = config.load(paths)
        config.save(
            paths, conf.with_changes(server=dataclasses.replace(conf.server, url=f"https://{link.url_host}"))
        )
    return paths  # a listening one is put behind the link once it runs (Site.start_tentacle)


@pytest.fixture
async def site(tmp_path: Path, mode: str) -> AsyncIterator[Site]:
    """A server with the package in its feed, a registered tentacle behind a slow link (not started)."""
    server = ServerProcess(tmp_path / "server")
    await server.init()
    package = package_file(tmp_path)
    await server.cli("package", "push", str(package))
    await server.start()
    link = FaultProxy("127.0.0.1", server.rig.api_port)  # a listening tentacle's port comes later
    await link.start()
    link.set_rate(RATE, "up" if mode == "listening" else "down")  # the package's direction
    made = Site(tmp_path, mode, server, link, await _register(server, tmp_path, mode, link), package)
    try:
        yield made
    finally:
        if made.tentacle is not None and made.tentacle.poll() is None:
            await made.kill_tentacle(signal.SIGTERM)
        await link.close()
        if server.running:
            await server.kill(signal.SIGTERM)


async def _until_half_way(site: Site) -> None:
    """Wait until the partial holds at least 4 MiB (a writer's first buffer) and less than the whole."""
    await eventually(
        lambda: site.partial.exists() and site.partial.stat().st_size >= 4 * MiB, 60, "4 MiB arrived"
    )
    assert site.partial.stat().st_size < 16 * MiB


async def test_the_server_killed_mid_transfer_comes_back_and_the_deployment_succeeds_once(site: Site) -> None:
    """kill -9 of `server-shim run` while the package flows (fetched by a polling tentacle, pushed to a
    listening one): once the server is back the transfer resumes, the deployment succeeds, the step
    runs once; a polling tentacle's fetch waited on its backoff instead of failing."""
    await site.start_tentacle()
    await eventually(site.online, 30, "the tentacle online")
    task_id = await site.deploy()
    await _until_half_way(site)
    assert await site.server.kill() == -signal.SIGKILL
    site.link.heal()  # the restarted server may send at full speed
    if site.mode == "polling":  # the fetch meets the dead server and waits to try again
        await eventually(lambda: "package.fetch_retry" in site.tentacle_log.read_text(), 30, "a retry")
    await site.server.start()
    done = await _ended_task(site, task_id, 90)
    assert done["state"] == "success", done
    assert site.marks.read_text() == "ran\n"
    assert (await site.log_texts(task_id)).count(README.decode()) == 1
    if site.mode == "polling":
        tentacle_log = site.tentacle_log.read_text(errors="replace")
        assert "connection refused" in tentacle_log or "connection closed" in tentacle_log
        [download] = site.downloads()
        assert 0 < int(download["bytes"]) <= 12 * MiB, download  # the rest, not the whole file again


async def _ended_task(site: Site, task_id: str, timeout: float) -> dict[str, Any]:
    """The task once it ended."""
    found: dict[str, Any] = {}

    async def ended() -> bool:
        task = await site.ended(task_id)
        found.update(task or {})
        return task is not None

    await eventually(ended, timeout, f"task {task_id} ended")
    return found


def _plant_litter(site: Site, task_id: str) -> dict[str, Path]:
    """What other interrupted work leaves: an old partial and its validator, a half-written validator,
    an extraction cut short, a step's script file."""
    partial = site.paths.state / "packages" / "partial"
    old, tmp = partial / f"{'a' * 128}.part", partial / f"{'b' * 128}.part.json.tmp"
    old.write_bytes(b"abandoned")
    old.with_name(old.name + ".json").write_text(json.dumps({"validator": '"x"', "url": "https://x"}))
    stamp = time.time() - 3 * 86400
    os.utime(old, (stamp, stamp))
    tmp.write_text('{"valid')
    work = site.paths.state / "work" / task_id
    extraction = work / ".0-package.partial-k9x2"
    extraction.mkdir(parents=True)
    (extraction / "payload.bin").write_bytes(b"half")
    script = work / ".tentacle-script-1a2b3c.sh"
    script.write_text("echo half")
    return {
        "old partial": old,
        "its validator": old.with_name(old.name + ".json"),
        "half-written validator": tmp,
        "extraction": extraction,
        "script": script,
    }


@pytest.mark.parametrize("mode", ["polling"])
async def test_a_tentacle_killed_mid_download_resumes_and_its_leftovers_go_at_start(site: Site) -> None:
    """kill -9 of `tentacle run` mid-download: at its next start old partials, half-written validators,
    cut extractions and script files are gone, the fresh partial is resumed, the step runs once."""
    await site.start_tentacle()
    await eventually(site.online, 30, "the tentacle online")
    task_id = await site.deploy()
    await _until_half_way(site)
    await site.kill_tentacle()
    kept = site.partial.stat().st_size
    planted = _plant_litter(site, task_id)
    site.link.heal()
    await site.start_tentacle()
    done = await _ended_task(site, task_id, 90)
    assert done["state"] == "success", done
    assert [name for name, path in planted.items() if path.exists()] == []
    assert site.marks.read_text() == "ran\n"
    [download] = site.downloads()
    assert int(download["bytes"]) == site.package.stat().st_size - kept  # resumed where it stopped
    assert "package.leftovers_removed" in site.tentacle_log.read_text(errors="replace")


@pytest.mark.parametrize("mode", ["polling"])
async def test_leftovers_go_when_the_tentacle_starts(site: Site) -> None:
    """What interrupted downloads and steps left is gone once a restarted tentacle is up, before any
    download could have swept it (no task runs here)."""
    await site.start_tentacle()
    await eventually(site.online, 30, "the tentacle online")
    await site.kill_tentacle()
    (site.paths.state / "packages" / "partial").mkdir(parents=True)
    planted = _plant_litter(site, "T-earlier")
    await site.start_tentacle()
    await eventually(site.connected, 30, "the restarted tentacle connected")
    assert [name for name, path in planted.items() if path.exists()] == []
