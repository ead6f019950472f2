"""Push: the server streams a task's "push" packages to each listening target.

How it works. `Pusher` is a gate hook of the dispatcher: before a listening target gets
its acquisition gate, each of its plan's pushed packages is sent to the tentacle's
listening port (the protocol is in tentacle.protocol.push_wire): HEAD says whether it is there
already or how much of it, and one PUT sends the rest from that offset. A cut is resumed
from where the tentacle's partial ends, up to `attempts` times. The body is zstd when a
sample of the file shrinks by a tenth or more (a .nupkg or .tar.gz is already compressed
and goes as it is). The body is sent from a worker thread over a blocking TLS socket
pinned to the target's certificate, in 1 MiB writes, so that 20 pushes at once do not
load the event loop that serves the API and the polling tentacles.

A push that fails is logged and left: the tentacle's acquisition then fetches the package
from the server's feed itself, so a push failure costs time, never the deployment.
Polling targets are not pushed to: they fetch from the feed over their own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

from server_shim.dispatch.fleet import Fleet
from server_shim.store import feed_store as feed
from server_shim.store.machine_rows import Machine
from tentacle.common.logs import event
from tentacle.net.failures import CONNECTION_ERRORS
from tentacle.net.pinned import PinnedConnection
from tentacle.protocol.coordinator import ACQUISITION
from tentacle.protocol.plan import PackageRef, Plan, PlannedPackage
from tentacle.protocol.push_wire import ENCODING, OFFSET, PARTIAL_LENGTH

log = logging.getLogger("server_shim.dispatch.pusher")
T = TypeVar("T")
CHUNK = 1024 * 1024
SAMPLE = 1024 * 1024
WORTH_IT = 0.9  # compress when a sample shrinks to this share of its size or less
ZSTD_LEVEL = 1
PUSH_THREADS = 8  # pushes at once; more targets wait their turn


class PushError(Exception):
    """One push attempt failed (the reason is the message)."""


class Pusher:
    """Sends pushed packages to listening targets; a dispatcher gate hook."""

    def __init__(
        self, fleet: Fleet, feed_dir: Path, ctx: ssl.SSLContext, *, attempts: int = 5, timeout: float = 30.0
    ) -> None:
        self.fleet, self.feed_dir, self.ctx = fleet, feed_dir, ctx
        self.attempts, self.timeout = attempts, timeout
        self._compressible: dict[str, bool] = {}
        self.sent = 0  # body bytes that left for tentacles (the egress benchmark reads it)
        # Pushes run in threads of their own: a 20-target push must not take every thread of
        # the default executor, which the API's file answers and the feed also use.
        self._threads = ThreadPoolExecutor(max_workers=PUSH_THREADS, thread_name_prefix="push")

    def close(self) -> None:
        """Stop the push threads (a running push was stopped with its task)."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, space: str, plan: Plan, gate_name: str) -> None:
        """Push `plan`'s packages when its acquisition gate is about to open on a listening target.

        Not when the plan forces package redeployment: the tentacle then acquires every
        package again itself, and a push would only send it twice.
        """
        if gate_name != ACQUISITION or plan.force_package_redeployment:
            return
        pushed = [p for p in plan.packages() if p.acquisition == "push"]
        if not pushed:
            return
        machine = await self.fleet.machine(plan.machine_name, space)
        if machine is None or machine.mode != "listening" or machine.endpoint is None:
            return
        await asyncio.gather(*(self.push(machine, plan.task_id, p) for p in pushed))

    async def push(self, machine: Machine, task_id: str, pkg: PlannedPackage) -> bool:
        """Send one package, resuming after cuts; whether it arrived (failures are logged)."""
        path = feed.file_path(
            self.feed_dir, PackageRef(pkg.id, pkg.version, pkg.sha512, pkg.size, pkg.file_name)
        )
        url = f"{str(machine.endpoint).rstrip('/')}/packages/v1/{task_id}/{pkg.sha512}"
        started, reasons = time.monotonic(), []
        for _ in range(self.attempts):
            try:
                probe = _Sender(url, self.ctx, machine.thumbprint, self.timeout)
                offset = await self._blocking(probe.head, probe)
                if offset is None:
                    event(log, "push.cached", target=machine.name, package=pkg.id, version=pkg.version)
                    return True
                sent = await self._send(url, path, pkg, offset, thumbprint=machine.thumbprint)
            except PushError as exc:
                reasons.append(str(exc))
                await asyncio.sleep(0.5)
                continue
            seconds = max(time.monotonic() - started, 1e-9)
            event(
                log, "push.done", target=machine.name, package=pkg.id, version=pkg.version,
                offset=offset, wire_bytes=sent, MBps=f"{pkg.size / seconds / 1e6:.0f}",
            )  # fmt: skip
            return True
        event(
            log, "push.failed", logging.WARNING, target=machine.name, package=pkg.id,
            version=pkg.version, reasons=" | ".join(reasons),
        )  # fmt: skip
        return False

    async def _send(self, url: str, path: Path, pkg: PlannedPackage, offset: int, *, thumbprint: str) -> int:
        """PUT the file from `offset` on a connection pinned to `thumbprint`; the bytes sent."""
        zstd = self._compressible.get(pkg.sha512)
        if zstd is None:
            zstd = self._compressible[pkg.sha512] = await self._blocking(functools.partial(_shrinks, path))
        sender = _Sender(url, self.ctx, thumbprint, self.timeout)
        try:
            return await self._blocking(functools.partial(sender.put, path, offset, pkg.size, zstd), sender)
        finally:
            self.sent += sender.sent

    async def _blocking(self, work: Callable[[], T], sender: _Sender | None = None) -> T:
        """Run `work` on a push thread; cancelled, it aborts `sender`'s connection (its write returns)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._threads, work)
        except asyncio.CancelledError:
            if sender is not None:
                sender.abort()
            raise


def _shrinks(path: Path) -> bool:
    """Whether zstd makes a sample of the file at least a tenth smaller."""
    import zstandard

    try:
        with path.open("rb") as handle:
            sample = handle.read(SAMPLE)
    except OSError:
        return False
    if not sample:
        return False
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(sample)
    return len(packed) <= WORTH_IT * len(sample)


class _Sender:
    """One PUT over a blocking, pinned TLS connection (for a worker thread); `abort` from any thread."""

    def __init__(self, url: str, ctx: ssl.SSLContext, thumbprint: str, timeout: float) -> None:
        self.url, self.ctx, self.thumbprint, self.timeout = url, ctx, thumbprint, timeout
        self.sent = 0
        self._pinned: PinnedConnection | None = None

    def head(self) -> int | None:
        """None when the tentacle has the file; else how many bytes of it it holds."""
        with self._connection("HEAD") as conn:
            conn.request("HEAD", urlsplit(self.url).path)
            answer = conn.getresponse()
            answer.read()
            if answer.status == 200:
                return None
            held = answer.getheader(PARTIAL_LENGTH)
            if answer.status == 404 and held is not None and held.isdigit():
                return int(held)
            raise PushError(f"HEAD {self.url}: HTTP {answer.status}")

    def put(self, path: Path, offset: int, size: int, zstd: bool) -> int:
        """Send the file from `offset` (zstd-compressed or not); the body bytes that went out."""
        with self._connection("PUT") as conn:
            target = urlsplit(self.url).path
            headers = {OFFSET: str(offset), "Content-Type": "application/octet-stream"}
            with path.open("rb") as handle:
                handle.seek(offset)
                if zstd:
                    headers[ENCODING] = "zstd"
                    conn.request(
                        "PUT", target, body=self._compressed(handle), headers=headers, encode_chunked=True
                    )
                else:
                    headers["Content-Length"] = str(size - offset)
                    conn.request("PUT", target, body=_Counted(handle, self), headers=headers)
            answer = conn.getresponse()
            text = answer.read(64 * 1024).decode("utf-8", "replace")
            if answer.status != 200:
                raise PushError(f"PUT {self.url}: HTTP {answer.status}: {text[:300]}")
            return self.sent

    @contextlib.contextmanager
    def _connection(self, method: str) -> Iterator[http.client.HTTPSConnection]:
        """A connection to the tentacle, pinned to its thumbprint; failures become PushError."""
        pinned = PinnedConnection(
            self.url,
            self.ctx,
            connect_timeout=self.timeout,
            io_timeout=self.timeout,
            pins=[self.thumbprint],
            blocksize=CHUNK,
        )
        self._pinned = pinned
        try:
            yield pinned.open()
        except CONNECTION_ERRORS as exc:
            raise PushError(f"{method} {self.url}: {pinned.describe(exc)}") from exc
        finally:
            pinned.close()

    def _compressed(self, handle: BinaryIO) -> Iterator[bytes]:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        while data := handle.read(CHUNK):
            out = compressor.compress(data)
            if out:
                self.sent += len(out)
                yield out
        tail = compressor.flush()
        self.sent += len(tail)
        yield tail

    def abort(self) -> None:
        """Stop the transfer: shut the socket down under the writing thread."""
        if self._pinned is not None:
            self._pinned.abort()


class _Counted:
    """A file that counts what http.client reads from it."""

    def __init__(self, handle: BinaryIO, sender: _Sender) -> None:
        self.handle, self.sender = handle, sender

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.sender.sent += len(data)
        return data
