"""The fault proxy on its own, in front of a plain echo server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from rigs.faultproxy import FaultProxy
from tests.conftest import eventually

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Echo:
    """An echo server that remembers what it received and how many peers closed."""

    received: bytearray = field(default_factory=bytearray)
    closed: int = 0
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Echo until the peer closes or resets."""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                self.received += chunk
                writer.write(chunk)
                await writer.drain()
        self.closed += 1
        writer.close()


async def _echo() -> Echo:
    echo = Echo()
    echo.server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    return echo


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    """A running echo server."""
    server = await _echo()
    yield server
    assert server.server is not None
    server.server.close()


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the echo server."""
    async with FaultProxy("127.0.0.1", echo.port) as running:
        yield running


async def _connect(proxy: FaultProxy) -> Pair:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything that arrives before the connection closes or resets."""
    data = bytearray()
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            data += chunk
    return bytes(data)


async def _read_exactly(reader: asyncio.StreamReader, size: int, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.readexactly(size), timeout)


async def test_forwards_bytes_both_ways_unchanged(proxy: FaultProxy, echo: Echo) -> None:
    """Without faults, a megabyte goes through and comes back byte for byte."""
    reader, writer = await _connect(proxy)
    data = os.urandom(1024 * 1024)
    writer.write(data)
    assert await _read_exactly(reader, len(data)) == data
    assert bytes(echo.received) == data
    assert proxy.stats.forwarded == {"up": len(data), "down": len(data)}
    writer.close()


async def test_drop_upstream_at_byte_n(proxy: FaultProxy, echo: Echo) -> None:
    """drop_at('up', n): the target gets exactly n bytes, then both ends see the connection gone."""
    proxy.drop_at("up", 1000)
    reader, writer = await _connect(proxy)
    data = os.urandom(5000)
    writer.write(data)
    echoed = await _read_until_closed(reader)  # what the echo sent back before the reset, if any
    assert data[:1000].startswith(echoed)
    await eventually(lambda: echo.closed == 1, 5, every=0.02)
    assert bytes(echo.received) == data[:1000] and proxy.stats.drops == 1


async def test_drop_downstream_at_byte_n(proxy: FaultProxy) -> None:
    """drop_at('down', n): the client gets exactly n bytes of the answer, then the reset."""
    proxy.drop_at("down", 3000)
    reader, writer = await _connect(proxy)
    data = os.urandom(8000)
    writer.write(data)
    assert await _read_until_closed(reader) == data[:3000]


async def test_drop_at_zero_forwards_nothing(proxy: FaultProxy, echo: Echo) -> None:
    """drop_at(d, 0) drops the connection at its very first byte."""
    proxy.drop_at("up", 0)
    reader, writer = await _connect(proxy)
    writer.write(b"hello")
    assert await _read_until_closed(reader) == b""
    assert echo.received == b""


async def test_a_drop_fires_on_as_many_connections_as_asked(proxy: FaultProxy) -> None:
    """times=1: the first connection is dropped, the next one goes through untouched."""
    proxy.drop_at("down", 10, times=1)
    first, w1 = await _connect(proxy)
    w1.write(b"x" * 100)
    assert await _read_until_closed(first) == b"x" * 10
    second, w2 = await _connect(proxy)
    w2.write(b"y" * 100)
    assert await _read_exactly(second, 100) == b"y" * 100
    assert proxy.stats.drops == 1
    w2.close()


async def test_from_now_counts_from_the_moment_of_arming(proxy: FaultProxy) -> None:
    """An open connection past the offset is dropped that many bytes after the fault is armed."""
    reader, writer = await _connect(proxy)
    writer.write(b"a" * 500)
    await _read_exactly(reader, 500)
    proxy.drop_at("down", 100, from_now=True)
    writer.write(b"b" * 500)
    assert await _read_until_closed(reader) == b"b" * 100


async def test_an_open_connection_past_the_offset_is_not_dropped(proxy: FaultProxy) -> None:
    """Without from_now, the offset counts from the connection's start: already past it, no drop."""
    reader, writer = await _connect(proxy)
    writer.write(b"a" * 500)
    await _read_exactly(reader, 500)
    proxy.drop_at("down", 100)
    writer.write(b"b" * 500)
    assert await _read_exactly(reader, 500) == b"b" * 500
    assert proxy.stats.drops == 0
    writer.close()


async def test_cut_before_the_last_byte_of_a_known_size_answer(proxy: FaultProxy) -> None:
    """cut_before_last: an answer of known size arrives whole but for its last byte."""
    proxy.cut_before_last("down", 4096)
    reader, writer = await _connect(proxy)
    data = os.urandom(4096)
    writer.write(data)
    assert await _read_until_closed(reader) == data[:4095]


async def test_pause_holds_bytes_until_resume(proxy: FaultProxy, echo: Echo) -> None:
    """While paused nothing is forwarded; on resume everything arrives, in order."""
    reader, writer = await _connect(proxy)
    proxy.pause()
    for i in range(50):
        writer.write(f"{i:04d}".encode())
    await eventually(lambda: proxy.stats.held["up"] == 1, 5, every=0.02)  # the sender waits at the pause
    assert echo.received == b"" and proxy.stats.forwarded["up"] == 0
    proxy.resume()
    assert await _read_exactly(reader, 200) == b"".join(f"{i:04d}".encode() for i in range(50))
    writer.close()


async def test_pause_of_one_direction_lets_the_other_flow(proxy: FaultProxy, echo: Echo) -> None:
    """pause('down') stops answers only: the target still receives what is sent."""
    reader, writer = await _connect(proxy)
    proxy.pause("down")
    writer.write(b"ping")
    await eventually(lambda: echo.received == b"ping", 5, every=0.02)
    await eventually(lambda: proxy.stats.held["down"] == 1, 5, every=0.02)  # the answer waits at the pause
    assert proxy.stats.forwarded["down"] == 0
    proxy.resume("down")
    assert await _read_exactly(reader, 4) == b"ping"
    writer.close()


async def test_latency_holds_every_chunk_and_keeps_order_and_throughput(proxy: FaultProxy) -> None:
    """200 ms each way: a round trip takes at least 400 ms, chunks keep order and are not serialised."""
    proxy.set_latency(0.2)
    reader, writer = await _connect(proxy)
    loop = asyncio.get_running_loop()
    began = loop.time()
    expected = b""
    for i in range(20):
        piece = f"<{i}>".encode()
        expected += piece
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.01)
    assert await _read_exactly(reader, len(expected)) == expected
    took = loop.time() - began
    assert 0.4 <= took < 3.0, took  # one chunk after another would take 20 x 0.4 s
    writer.close()


async def test_blackhole_forwards_nothing_and_keeps_the_connection_half_open(
    proxy: FaultProxy, echo: Echo
) -> None:
    """blackhole: bytes vanish and the client's close never reaches the target."""
    reader, writer = await _connect(proxy)
    writer.write(b"first")
    assert await _read_exactly(reader, 5) == b"first"
    proxy.blackhole()
    writer.write(b"lost")
    writer.write_eof()
    await eventually(
        lambda: proxy.stats.swallowed["up"] == 4 and proxy.stats.swallowed_closes == 1, 5, every=0.02
    )
    assert bytes(echo.received) == b"first" and echo.closed == 0  # swallowed: never to arrive
    assert len(proxy.open) == 1
    proxy.reset()
    await eventually(lambda: echo.closed == 1, 5, every=0.02)


async def test_heal_clears_every_fault(proxy: FaultProxy) -> None:
    """After heal, a new connection goes through as if nothing had happened."""
    proxy.blackhole()
    proxy.pause()
    proxy.set_latency(5)
    proxy.drop_at("up", 0)
    proxy.heal()
    reader, writer = await _connect(proxy)
    writer.write(b"fine")
    assert await _read_exactly(reader, 4) == b"fine"
    writer.close()


async def test_reset_drops_every_open_connection(proxy: FaultProxy, echo: Echo) -> None:
    """reset(): both ends of every open connection see it go."""
    reader, writer = await _connect(proxy)
    writer.write(b"hi")
    await _read_exactly(reader, 2)
    proxy.reset()
    assert await _read_until_closed(reader) == b""
    await eventually(lambda: echo.closed == 1, 5, every=0.02)
    assert not proxy.open


async def test_close_is_passed_on_both_ways(proxy: FaultProxy, echo: Echo) -> None:
    """A client's close reaches the target, and the target's close comes back."""
    reader, writer = await _connect(proxy)
    writer.write(b"bye")
    writer.write_eof()
    assert await _read_until_closed(reader) == b"bye"
    await eventually(lambda: echo.closed == 1 and not proxy.open, 5, every=0.02)


async def test_retarget_sends_new_connections_elsewhere(proxy: FaultProxy, echo: Echo) -> None:
    """After retarget, new connections reach the new target."""
    other = await _echo()
    proxy.retarget("127.0.0.1", other.port)
    reader, writer = await _connect(proxy)
    writer.write(b"there")
    assert await _read_exactly(reader, 5) == b"there"
    assert other.received == b"there" and echo.received == b""
    writer.close()
    assert other.server is not None
    other.server.close()


async def test_unreachable_target_closes_the_client(echo: Echo) -> None:
    """When the target refuses, the client's connection is closed at once."""
    assert echo.server is not None
    port = echo.port
    echo.server.close()
    await echo.server.wait_closed()
    async with FaultProxy("127.0.0.1", port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _read_until_closed(reader) == b""
        writer.close()


async def test_blackhole_open_only_lets_new_connections_through(proxy: FaultProxy, echo: Echo) -> None:
    """blackhole(open_only=True) silences the open connection; the next one works."""
    _, old_writer = await _connect(proxy)
    proxy.blackhole(open_only=True)
    old_writer.write(b"lost")
    reader, writer = await _connect(proxy)
    writer.write(b"kept")
    assert await _read_exactly(reader, 4) == b"kept"
    await eventually(lambda: proxy.stats.swallowed["up"] == 4, 5, every=0.02)  # "lost", never to arrive
    assert bytes(echo.received) == b"kept"
    writer.close()
    old_writer.close()
