"""Slow clients (issue 15, item 10): trickled handshakes, headers and bodies are cut; addresses are bounded.

A real `server-shim run` process with short deadlines, and real TLS clients on 127.0.0.1
that take their time, on the API port and on the polling port (where a client
certificate of the server's CA gets through the handshake).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_shim import server_config
from server_shim.ca import Authority
from server_shim.server_config import Connections
from tentacle.common.paths import resolve
from tentacle.net import pki
from tests.real_fleet import RealFleet

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MIN_RATE = 2000
SLACK = 3.0  # the deadline is checked by timers, on a machine shared with other tests


def _configured(tmp_path: Path, connections: Connections) -> RealFleet:
    fleet = RealFleet(tmp_path)
    paths = resolve("server-shim", str(fleet.server.home))
    server_config.save(paths, server_config.load(paths).with_changes(connections=connections))
    fleet.start_server()
    return fleet


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[RealFleet]:
    """A server with 2 s deadlines and the default bounds."""
    limits = Connections(
        handshake_timeout=HEADER_TIMEOUT,
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        body_min_rate=MIN_RATE,
    )
    fleet = _configured(tmp_path, limits)
    yield fleet
    fleet.close()


def _client(fleet: RealFleet, tmp_path: Path, port_name: str) -> ssl.SSLContext:
    """A TLS client for the port: the polling port also wants a certificate of the server's CA."""
    ctx = ssl.create_default_context(cafile=str(fleet.server.home / "ca.pem"))
    ctx.check_hostname = False
    if port_name == "polling":
        key = pki.new_key()
        cert = Authority(fleet.server.home).sign(pki.build_csr(key, "slow").decode(), "slow")
        pki.write_private(tmp_path / "slow.key", pki.key_pem(key))
        pki.write_private(tmp_path / "slow.crt", pki.cert_pem(cert))
        ctx.load_cert_chain(tmp_path / "slow.crt", tmp_path / "slow.key")
    return ctx


def _port(fleet: RealFleet, port_name: str) -> int:
    return fleet.server.api_port if port_name == "api" else fleet.server.polling_port


async def _closed_by_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drip: bytes) -> bytes:
    """Write ``drip`` every 0.25 s until the server closes; what it answered (b"" for nothing)."""
    answer = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while True:
            writer.write(drip)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(65536), 0.25)
                if not data:
                    break
                answer += data
    writer.close()
    return answer


async def _trickle_headers(port: int, ctx: ssl.SSLContext) -> tuple[float, float, bytes]:
    """(seconds from connecting, seconds from the handshake's end) until the server cut a request
    whose headers never end, and what it answered."""
    started = time.monotonic()  # the server's deadline starts after this, at its end of the handshake
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    connected = time.monotonic()
    writer.write(b"GET /api/Default/machines/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    answer = await asyncio.wait_for(_closed_by_server(reader, writer, b"a"), 60)
    ended = time.monotonic()
    return ended - started, ended - connected, answer


@pytest.mark.parametrize("port_name", ["api", "polling"])
async def test_a_hundred_clients_trickling_headers_are_cut_at_the_deadline(
    strict: RealFleet, tmp_path: Path, port_name: str
) -> None:
    """100 TLS clients sending a header byte every 0.25 s are all closed within the header deadline."""
    ctx = _client(strict, tmp_path, port_name)
    held = await asyncio.gather(*(_trickle_headers(_port(strict, port_name), ctx) for _ in range(100)))
    assert max(after for _, after, _ in held) < HEADER_TIMEOUT + SLACK, held
    assert min(total for total, _, _ in held) >= HEADER_TIMEOUT  # the deadline, not an immediate refusal
    assert all(answer == b"" for _, _, answer in held)  # nothing was served to a request never finished


async def test_a_silent_client_is_cut_at_the_handshake_deadline(strict: RealFleet) -> None:
    """A TCP client that never starts its TLS handshake is closed by the handshake deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.server.api_port)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + SLACK + 5) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT + SLACK
    writer.close()


def _post_head(strict: RealFleet, length: int) -> bytes:
    return (
        "PUT /api/Default/projects/Slow/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-Api-Key: {strict.server.admin_key()}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(("drip", "reason"), [(b"", "no byte of the request body"), (b"{ " * 50, "minimum")])
async def test_a_stalled_or_crawling_body_gets_408_and_the_connection_closes(
    strict: RealFleet, drip: bytes, reason: str
) -> None:
    """A body that stops, or comes at 400 B/s (minimum 2000), is answered 408 naming why, then closed."""
    ctx = _client(strict, Path(), "api")
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.server.api_port, ssl=ctx)
    writer.write(_post_head(strict, 1_000_000))
    started = time.monotonic()
    answer = await asyncio.wait_for(_closed_by_server(reader, writer, drip), 60)
    assert time.monotonic() - started < BODY_TIMEOUT + SLACK + 1
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    error = json.loads(body)["error"]
    assert error["code"] == "too-slow" and reason in error["message"]
    assert "connection.slow_body" in strict.server.log.read_text()


async def test_a_steady_body_longer_than_the_deadline_goes_through(strict: RealFleet) -> None:
    """The rules are about pace, not length: a body arriving steadily for 4 s (deadline 2 s) is stored."""
    doc = json.dumps(
        {
            "name": "Slow",
            "steps": [{"name": "S", "roles": ["web"], "script": {"syntax": "bash", "body": "x" * 200_000}}],
        }
    ).encode()
    ctx = _client(strict, Path(), "api")
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.server.api_port, ssl=ctx)
    writer.write(_post_head(strict, len(doc)))
    piece = len(doc) // 16 + 1
    for start in range(0, len(doc), piece):
        writer.write(doc[start : start + piece])
        await writer.drain()
        await asyncio.sleep(0.25)
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 201"), status_line


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[RealFleet]:
    """A server allowing 5 connections per address on each port."""
    fleet = _configured(tmp_path, Connections(per_address=5, polling_per_address=5))
    yield fleet
    fleet.close()


@pytest.mark.parametrize("port_name", ["api", "polling"])
async def test_connections_per_address_are_bounded(
    bounded: RealFleet, tmp_path: Path, port_name: str
) -> None:
    """With 5 connections open from one address, a 6th is closed before its handshake; a 5th reopens."""
    ctx, port = _client(bounded, tmp_path, port_name), _port(bounded, port_name)
    held = [await asyncio.open_connection("127.0.0.1", port, ssl=ctx) for _ in range(5)]
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
    assert "connection.over_limit" in bounded.server.log.read_text()
    _, first = held.pop()
    first.close()
    await first.wait_closed()
    again = None
    for _ in range(50):  # the server hears of the close a moment later
        try:
            again = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            break
        except (ConnectionError, ssl.SSLError):
            await asyncio.sleep(0.1)
    assert again is not None
    for _, writer in [*held, again]:
        writer.close()
