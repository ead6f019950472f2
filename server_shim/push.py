"""Push: the server streams a task's "push" packages to each listening target.

How it works. `Pusher` is a gate hook of the dispatcher: before a listening target gets
its acquisition gate, each of its plan's pushed packages is sent to the tentacle's
listening port (the protocol is in tentacle.receive): HEAD says whether it is there
already or how much of it, and one PUT sends the rest from that offset. A cut is resumed
from where the tentacle's partial ends, up to `attempts` times. The body is zstd when a
sample of the file shrinks by a tenth or more (a .nupkg or .tar.gz is already compressed
and goes as it is). Reading, compressing and sending run through a small queue so that
the disk, the compressor and the socket work at the same time.

A push that fails is logged and left: the tentacle's acquisition then fetches the package
from the server's feed itself, so a push failure costs time, never the deployment.
Polling targets are not pushed to: they fetch from the feed over their own connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from server_shim import feed
from server_shim.fleet import Fleet
from server_shim.machines import Machine
from tentacle.logs import event
from tentacle.protocol.gates import ACQUISITION
from tentacle.protocol.plan import PackageRef, Plan, PlannedPackage
from tentacle.receive import ENCODING, OFFSET, PARTIAL_LENGTH
from tentacle.tls import pinned_connector

log = logging.getLogger("server_shim.push")
CHUNK = 1024 * 1024
SAMPLE = 1024 * 1024
WORTH_IT = 0.9  # compress when a sample shrinks to this share of its size or less
ZSTD_LEVEL = 1


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

    async def __call__(self, plan: Plan, gate_name: str) -> None:
        """Push `plan`'s packages when its acquisition gate is about to open on a listening target."""
        if gate_name != ACQUISITION:
            return
        pushed = [p for p in plan.packages() if p.acquisition == "push"]
        if not pushed:
            return
        machine = await self.fleet.machine(plan.machine_name)
        if machine is None or machine.mode != "listening" or machine.endpoint is None:
            return
        connector = pinned_connector([machine.thumbprint], limit=4)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(self.push(session, machine, plan.task_id, p) for p in pushed))

    async def push(
        self, session: aiohttp.ClientSession, machine: Machine, task_id: str, pkg: PlannedPackage
    ) -> bool:
        """Send one package, resuming after cuts; whether it arrived (failures are logged)."""
        path = feed.file_path(
            self.feed_dir, PackageRef(pkg.id, pkg.version, pkg.sha512, pkg.size, pkg.file_name)
        )
        url = f"{str(machine.endpoint).rstrip('/')}/packages/v1/{task_id}/{pkg.sha512}"
        started, reasons = time.monotonic(), []
        for _ in range(self.attempts):
            try:
                offset = await self._offset(session, url)
                if offset is None:
                    event(log, "push.cached", target=machine.name, package=pkg.id, version=pkg.version)
                    return True
                sent = await self._send(session, url, path, pkg, offset)
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

    async def _offset(self, session: aiohttp.ClientSession, url: str) -> int | None:
        """None when the tentacle has the file; else how many bytes of it it holds."""
        try:
            async with session.head(
                url, ssl=self.ctx, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as r:
                if r.status == 200:
                    return None
                if r.status == 404 and PARTIAL_LENGTH in r.headers:
                    return int(r.headers[PARTIAL_LENGTH])
                raise PushError(f"HEAD {url}: HTTP {r.status}")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise PushError(f"HEAD {url}: {exc or type(exc).__name__}") from exc

    async def _send(
        self, session: aiohttp.ClientSession, url: str, path: Path, pkg: PlannedPackage, offset: int
    ) -> int:
        """PUT the file from `offset`; the bytes that went on the wire."""
        zstd = await self._worth_compressing(path, pkg.sha512)
        counter = [0]
        headers = {OFFSET: str(offset), "Content-Type": "application/octet-stream"}
        if zstd:
            headers[ENCODING] = "zstd"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
        try:
            async with session.put(
                url, data=_body(path, offset, zstd, counter), headers=headers, ssl=self.ctx, timeout=timeout
            ) as answer:
                text = await answer.text()
                if answer.status != 200:
                    raise PushError(f"PUT {url}: HTTP {answer.status}: {text[:300]}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PushError(f"PUT {url}: {exc or type(exc).__name__}") from exc
        finally:
            self.sent += counter[0]
        return counter[0]

    async def _worth_compressing(self, path: Path, sha512: str) -> bool:
        known = self._compressible.get(sha512)
        if known is None:
            known = self._compressible[sha512] = await asyncio.to_thread(_shrinks, path)
        return known


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


async def _body(path: Path, offset: int, zstd: bool, counter: list[int]) -> AsyncIterator[bytes]:
    """The file from `offset`, maybe compressed, read ahead in a thread; counts what it yields."""
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=4)
    loop = asyncio.get_running_loop()
    stop = False

    def produce() -> None:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj() if zstd else None
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                while not stop:
                    data = handle.read(CHUNK)
                    if not data:
                        break
                    out = compressor.compress(data) if compressor else data
                    if out:
                        asyncio.run_coroutine_threadsafe(queue.put(out), loop).result()
            if compressor is not None and not stop:
                asyncio.run_coroutine_threadsafe(queue.put(compressor.flush()), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
        except BaseException as exc:
            if not stop:
                asyncio.run_coroutine_threadsafe(queue.put(exc), loop).result()

    reader = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise PushError(f"{path}: cannot read: {item}")
            counter[0] += len(item)
            yield item
    finally:
        stop = True
        while not queue.empty():  # unblock a producer waiting for room
            queue.get_nowait()
        await asyncio.wait([reader], timeout=5)
