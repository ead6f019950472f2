"""A fault-injecting TCP proxy of our own, put between server and tentacle by the tests.

How it works. Each accepted connection gets its own connection to the target and two
pumps, one per direction: ``up`` (client to target) and ``down`` (target to client).
A pump's reader stamps every chunk it reads with the time it may leave and queues it;
its sender forwards the queue in order. Faults are switched at runtime, per direction,
and apply to every connection, the open ones and the next ones:

    drop_at(d, n)              forward n bytes of the connection, then reset both sockets
    cut_before_last(d, size)   a message of known size arrives but for its last byte
    pause(d) / resume(d)       stop forwarding (bytes wait in the proxy) / go on
    set_latency(seconds, d)    every chunk is held that long (order and throughput kept)
    blackhole(d)               read and discard, and pass no close on: a half-open connection
                               (``open_only``: only the connections open now)
    heal()                     no faults from now on;  reset(): reset every open connection

Byte offsets count what the proxy forwarded in that direction since the connection
started (``from_now=True`` counts from the moment the fault is armed instead). The
proxy forwards raw bytes and never terminates TLS, so trust stays end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

Direction = Literal["up", "down"]
DIRECTIONS: Final[tuple[Direction, Direction]] = ("up", "down")
BOTH: Final[tuple[Direction, ...]] = DIRECTIONS
_CHUNK: Final = 64 * 1024
_EOF: Final = b""


def _directions(direction: Direction | None) -> tuple[Direction, ...]:
    """One direction, or both when None."""
    return BOTH if direction is None else (direction,)


@dataclass(eq=False)
class Drop:
    """A drop armed at ``offset`` bytes; fires on at most ``times`` connections."""

    offset: int
    times: int
    base: dict[int, int] = field(default_factory=dict)  # connection id -> bytes when armed

    def cut(self, conn_id: int, sent: int, size: int) -> int | None:
        """How many bytes of the next ``size`` may pass before the drop, or None (no drop)."""
        threshold = self.base.get(conn_id, 0) + self.offset
        if self.times > 0 and sent <= threshold < sent + size:
            return threshold - sent
        return None


@dataclass(eq=False)
class Faults:
    """The faults of one direction."""

    latency: float = 0.0
    blackholed: bool = False
    drops: list[Drop] = field(default_factory=list)
    flowing: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.flowing.set()


@dataclass
class Stats:
    """What the proxy saw: connections accepted, drops fired, bytes forwarded per direction, what
    a black hole swallowed (bytes, and closes not passed on) and the chunks a pause held."""

    accepted: int = 0
    drops: int = 0
    forwarded: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    swallowed: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    swallowed_closes: int = 0
    held: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})  # chunks stopped by a pause


class Connection:
    """One proxied connection: a client socket, a target socket, two pumps."""

    def __init__(self, proxy: FaultProxy, conn_id: int, client: asyncio.StreamWriter) -> None:
        self.proxy, self.id = proxy, conn_id
        self.writers: list[asyncio.StreamWriter] = [client]
        self.sent: dict[str, int] = {"up": 0, "down": 0}
        self.eof: set[str] = set()
        self.blackholed: set[str] = set()  # directions black-holed on this connection only
        self.jobs: list[asyncio.Task[None]] = []

    async def run(self, client: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        """Connect to the target and pump both ways until both ends are done."""
        host, port = self.proxy.target
        try:
            target, target_writer = await asyncio.open_connection(host, port)
        except OSError:
            self.abort()
            return
        self.writers.append(target_writer)
        self.jobs = [
            asyncio.create_task(self._pump("up", client, target_writer)),
            asyncio.create_task(self._pump("down", target, client_writer)),
        ]
        await asyncio.gather(*self.jobs, return_exceptions=True)
        self.abort()

    async def _pump(
        self, direction: Direction, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        """Read into a queue and forward the queue, so latency never slows the reading."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        reader = asyncio.create_task(self._read(direction, source, queue))
        try:
            await self._send(direction, sink, queue)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(
        self, direction: Direction, source: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await source.read(_CHUNK)
            except OSError:
                chunk = _EOF  # a reset from the source ends its stream like a close would
            queue.put_nowait((loop.time() + self.proxy.faults[direction].latency, chunk))
            if not chunk:
                return

    async def _send(
        self, direction: Direction, sink: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        faults = self.proxy.faults[direction]
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not faults.flowing.is_set():  # this connection's sender stops here; all behind it wait
                self.proxy.stats.held[direction] += 1
                await faults.flowing.wait()
            if faults.blackholed or direction in self.blackholed:
                self.proxy.stats.swallowed[direction] += len(chunk)  # neither bytes nor the close pass
                self.proxy.stats.swallowed_closes += not chunk
                continue
            if not chunk:
                self._half_close(direction, sink)
                return
            if not await self._forward(direction, sink, chunk, faults):
                return

    async def _forward(
        self, direction: Direction, sink: asyncio.StreamWriter, chunk: bytes, faults: Faults
    ) -> bool:
        """Write a chunk, or its part before an armed drop; False when the connection is gone."""
        keep = self.proxy.fire_drop(faults, self.id, self.sent[direction], len(chunk))
        part = chunk if keep is None else chunk[:keep]
        try:
            sink.write(part)
            await sink.drain()
        except OSError:
            self.abort()
            return False
        self.sent[direction] += len(part)
        self.proxy.stats.forwarded[direction] += len(part)
        if keep is not None:
            self.abort()
            return False
        return True

    def _half_close(self, direction: Direction, sink: asyncio.StreamWriter) -> None:
        """Pass a close on; when both sides closed, the connection is over."""
        self.eof.add(direction)
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()
        if self.eof == {"up", "down"}:
            self.abort()

    def abort(self) -> None:
        """Reset both sockets now (a dropped connection, as a middlebox would)."""
        for writer in self.writers:
            writer.transport.abort()
        for job in self.jobs:
            if job is not asyncio.current_task():
                job.cancel()
        self.proxy.open.discard(self)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (port 0 by default) whose faults switch at runtime."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host, self.port = host, port
        self.faults: dict[str, Faults] = {d: Faults() for d in DIRECTIONS}
        self.stats = Stats()
        self.open: set[Connection] = set()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and reset every connection."""
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(set(self._handlers))

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url_host(self) -> str:
        """``host:port`` of the proxy, for URLs."""
        return f"{self.host}:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        conn = Connection(self, next(self._ids), writer)
        self.open.add(conn)
        task = asyncio.current_task()
        assert task is not None  # start_server runs each client in its own task
        self._handlers.add(task)
        try:
            await conn.run(reader, writer)
        finally:
            self._handlers.discard(task)

    # --- faults -------------------------------------------------------------------------

    def retarget(self, host: str, port: int) -> None:
        """Send the next connections somewhere else (e.g. to a port bound after the proxy)."""
        self.target = (host, port)

    def drop_at(self, direction: Direction, offset: int, *, times: int = 1, from_now: bool = False) -> Drop:
        """Forward ``offset`` bytes of a connection in ``direction``, then reset it (``times`` of them)."""
        base = {conn.id: conn.sent[direction] for conn in self.open} if from_now else {}
        drop = Drop(offset, times, base)
        self.faults[direction].drops.append(drop)
        return drop

    def cut_before_last(
        self, direction: Direction, size: int, *, times: int = 1, from_now: bool = False
    ) -> Drop:
        """A message of ``size`` bytes arrives but for its last byte, then the connection drops."""
        return self.drop_at(direction, size - 1, times=times, from_now=from_now)

    def fire_drop(self, faults: Faults, conn_id: int, sent: int, size: int) -> int | None:
        """The bytes that may pass before an armed drop fires (counting it), or None."""
        for drop in faults.drops:
            keep = drop.cut(conn_id, sent, size)
            if keep is not None:
                drop.times -= 1
                self.stats.drops += 1
                return keep
        return None

    def pause(self, direction: Direction | None = None) -> None:
        """Stop forwarding; what arrives waits in the proxy until `resume`."""
        for d in _directions(direction):
            self.faults[d].flowing.clear()

    def resume(self, direction: Direction | None = None) -> None:
        """Forward again, starting with what waited."""
        for d in _directions(direction):
            self.faults[d].flowing.set()

    def set_latency(self, seconds: float, direction: Direction | None = None) -> None:
        """Hold every chunk ``seconds`` before forwarding it."""
        for d in _directions(direction):
            self.faults[d].latency = seconds

    def blackhole(self, direction: Direction | None = None, *, open_only: bool = False) -> None:
        """Discard everything, closes included: both sockets stay open, nothing passes.

        ``open_only`` black-holes the connections open now and lets new ones through,
        as when a peer vanishes without a word (a lost NAT entry, a crashed host).
        """
        for d in _directions(direction):
            if not open_only:
                self.faults[d].blackholed = True
            for conn in self.open:
                conn.blackholed.add(d)

    def heal(self, directions: Iterable[Direction] = BOTH) -> None:
        """Clear every fault (connections a fault already broke stay broken)."""
        for d in directions:
            faults = self.faults[d]
            faults.latency, faults.blackholed = 0.0, False
            faults.drops.clear()
            faults.flowing.set()

    def reset(self) -> None:
        """Reset every open connection now."""
        for conn in list(self.open):
            conn.abort()
