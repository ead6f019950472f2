"""Temp files of the feed: a push killed with SIGKILL, or an upload cut midway, leaves nothing behind.

A `package push` is made to stall by giving it a FIFO as its file: it holds its staging
file open (and locked) until the test writes the rest or kills it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import aiohttp

from rigs.instances import python, wait_until
from server_shim.store import feed_store as feed
from server_shim.store.feed_staging import PREFIX, Staging, clean_stale
from tentacle.common.paths import InstancePaths
from tests.conftest import LiveServer, eventually, start_server, stop_server
from tests.nuget_tools import make_package
from tests.test_feed_protocol import tls

MIB = 1024 * 1024


def staging_files(feed_dir: Path) -> list[Path]:
    """The staging files in the feed folder."""
    return sorted(feed_dir.glob(PREFIX + "*")) if feed_dir.exists() else []


class StalledPush:
    """`server-shim package push FIFO` fed by the test, byte by byte as it decides."""

    def __init__(self, home: InstancePaths, fifo: Path) -> None:
        os.mkfifo(fifo)
        self.process = subprocess.Popen(
            python("server_shim", "--home", str(home.config), "package", "push", str(fifo)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._opened: list[BinaryIO] = []
        opener = threading.Thread(target=lambda: self._opened.append(fifo.open("wb")))  # blocks until read
        opener.start()
        opener.join(60)
        assert self._opened, "the push never opened its file"
        self.writer = self._opened[0]

    def feed(self, data: bytes) -> None:
        """Hand the push more bytes."""
        self.writer.write(data)
        self.writer.flush()

    def finish(self) -> tuple[int, str]:
        """End the file; the push's exit code and output."""
        self.writer.close()
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, (out + err).decode()

    def kill(self) -> None:
        """SIGKILL, as an OOM killer or an impatient operator would."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.writer.close()


def test_a_killed_push_leaves_a_staging_file_that_the_next_push_removes(
    server_home: InstancePaths, tmp_path: Path
) -> None:
    """kill -9 mid-push leaves its staging file; the next `package push` removes it and succeeds."""
    feed_dir = feed.store_dir(server_home.state)
    stalled = StalledPush(server_home, tmp_path / "Stalled.Pkg.1.0.0.nupkg")
    stalled.feed(os.urandom(2 * MIB))
    wait_until(lambda: any(p.stat().st_size for p in staging_files(feed_dir)), 30, what="a staging file")
    stalled.kill()
    assert len(staging_files(feed_dir)) == 1  # the kernel dropped the lock, not the file
    package = make_package(tmp_path / "src", "Next.Pkg", "1.0.0")
    done = subprocess.run(
        python("server_shim", "--home", str(server_home.config), "package", "push", str(package)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert staging_files(feed_dir) == []
    assert "removed 1 temp file(s) left by an interrupted push" in done.stderr


async def test_server_start_removes_what_a_killed_push_left(
    server_home: InstancePaths, tmp_path: Path
) -> None:
    """The server cleans the feed folder when it starts."""
    feed_dir = feed.store_dir(server_home.state)
    stalled = StalledPush(server_home, tmp_path / "Stalled.Pkg.1.0.0.nupkg")
    stalled.feed(os.urandom(2 * MIB))
    await asyncio.to_thread(wait_until, lambda: bool(staging_files(feed_dir)), 30)
    stalled.kill()
    live = await start_server(server_home)
    try:
        assert staging_files(feed_dir) == []
    finally:
        await stop_server(live)


def test_a_live_push_keeps_its_staging_file_through_another_push(
    server_home: InstancePaths, tmp_path: Path
) -> None:
    """Cleaning removes only unlocked files: a push in progress finishes as if alone."""
    feed_dir = feed.store_dir(server_home.state)
    data = make_package(tmp_path / "src", "Slow.Pkg", "1.0.0", os.urandom(3 * MIB)).read_bytes()
    stalled = StalledPush(server_home, tmp_path / "Slow.Pkg.1.0.0.nupkg")
    stalled.feed(data[: 2 * MIB])
    wait_until(lambda: bool(staging_files(feed_dir)), 30, what="a staging file")
    assert clean_stale(feed_dir) == 0
    stalled.feed(data[2 * MIB :])
    code, output = stalled.finish()
    assert code == 0, output
    assert staging_files(feed_dir) == []


def test_a_staging_file_is_removed_when_its_writer_fails(tmp_path: Path) -> None:
    """close() without a move removes the file; after a move it leaves the moved file alone."""
    with Staging(tmp_path) as staging:
        staging.write(b"partial")
    assert staging_files(tmp_path) == []
    with Staging(tmp_path) as staging:
        staging.write(b"whole")
        staging.finish()
        os.replace(staging.path, tmp_path / "kept")
    assert (tmp_path / "kept").read_bytes() == b"whole"


async def test_an_upload_streams_to_disk_and_a_cut_one_leaves_nothing(live_server: LiveServer) -> None:
    """The body lands on disk as it arrives (not held in memory); cut midway, its file is removed."""
    feed_dir = feed.store_dir(live_server.paths.state)
    boundary = "tentacle-test-boundary"
    on_disk = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield (
            f"--{boundary}\r\nContent-Disposition: form-data; name=package; filename=package.nupkg\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(16):
            yield os.urandom(MIB)
        await on_disk.wait()
        raise ConnectionAbortedError("the test cuts the upload")

    async def watch() -> None:
        await eventually(lambda: _staged_at_least(feed_dir, 12 * MIB), 30)
        on_disk.set()

    headers = {
        "X-NuGet-ApiKey": live_server.admin_key,
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    watcher = asyncio.create_task(watch())
    try:
        async with aiohttp.ClientSession() as session:
            await session.put(
                live_server.url + "/nuget/v3/package", data=body(), headers=headers, ssl=tls(live_server)
            )
    except (aiohttp.ClientError, ConnectionAbortedError):
        pass
    await watcher
    await eventually(lambda: _none_staged(feed_dir), 30)
    assert live_server.server.db.sync(feed.packages) == []


async def _staged_at_least(feed_dir: Path, size: int) -> bool:
    return any(p.stat().st_size >= size for p in staging_files(feed_dir))


async def _none_staged(feed_dir: Path) -> bool:
    return staging_files(feed_dir) == []
