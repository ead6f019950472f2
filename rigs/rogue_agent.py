"""A rogue tentacle: a registered identity that speaks the protocol badly on purpose.

It registers like any tentacle (token, CSR, pinned server), then answers the server's
calls, method by method, as told by a `Behaviour`:

    normal        a plausible answer (every gate it is given succeeds at once)
    huge          an answer of ``size`` bytes (streamed: the rogue never holds it)
    malformed     not JSON at all
    out_of_range  a well-formed answer with a field out of range (a log seq of 2**70)
    silent        no answer, ever
    dribble       a normal answer, one byte every ``delay`` seconds
    flood         task.status: ``lines`` lines of ``width`` characters, 1,000 per answer
                  with ``more`` set, and gates reported as they end (cancel included)
    hold          task.status: every gate it is given stays running (until a cancel it heard)

Both modes: listening (an HTTPS endpoint with its own certificate, as the server expects
at ``POST /rpc/v1``) and polling (a websocket to the server's polling port written by
hand, so that it can send a frame's header and then dribble or never finish its body).
The ``push`` key sets how the listening rogue answers the server's package pushes.
A test runs it in its own event loop (`RogueAgent.start` / `stop`), or as a process:
``python -m rigs.rogue_agent --home DIR --behave task.status=huge:40000000`` after
``register`` (see `main`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from rigs.rogue_answers import Answers, Behaviour, huge
from tentacle.agent import agent_config, registration
from tentacle.agent.agent_config import ListenConfig
from tentacle.agent.listening import report_port
from tentacle.common.paths import InstancePaths, resolve
from tentacle.net.tls import client_context, server_context

__all__ = ["Behaviour", "RogueAgent"]


class RogueAgent:
    """One rogue tentacle, registered in ``home``; `behaviours` by method name."""

    def __init__(self, home: Path, behaviours: dict[str, Behaviour] | None = None) -> None:
        self.paths: InstancePaths = resolve("tentacle", str(home))
        self.answers = Answers(behaviours or {}, lambda: (self.config.name, self.config.mode))
        self._runner: web.AppRunner | None = None
        self._polling: asyncio.Task[None] | None = None

    async def register(
        self,
        server: str,
        token: str,
        thumbprint: str,
        name: str,
        *,
        mode: str,
        port: int = 0,
        role: str = "web",
    ) -> None:
        """Register with the real registration exchange (listening on 127.0.0.1:``port``, or polling)."""
        listen = ListenConfig(host="127.0.0.1", port=port) if mode == "listening" else None
        reg = registration.Registration(
            server=server,
            token=token,
            server_thumbprint=thumbprint,
            name=name,
            environments=("Dev",),
            roles=(role,),
            listen=listen,
        )
        await registration.register(self.paths, reg)

    @property
    def behaviours(self) -> dict[str, Behaviour]:
        """How it answers, by method name: change an entry and the next call is answered so."""
        return self.answers.behaviours

    @property
    def calls(self) -> list[str]:
        """Every method asked, in order (pushes as ``push.<HTTP method>``)."""
        return self.answers.calls

    @property
    def config(self) -> agent_config.TentacleConfig:
        """The registered configuration."""
        return agent_config.load(self.paths)

    def _file(self, name: str) -> Path:
        return agent_config.file(self.paths, name)

    async def start(self) -> None:
        """Serve (listening) or connect (polling) in this event loop.

        Listening on port 0, it takes a free port and reports it as a real tentacle does.
        """
        conf = self.config
        if conf.mode == "listening":
            port = await self._listen(conf.listen.port)
            if conf.listen.port == 0:
                ctx = client_context(
                    self._file(agent_config.SERVER_CA_FILE),
                    self._file(agent_config.CERT_FILE),
                    self._file(agent_config.KEY_FILE),
                )
                await report_port(conf.server.url, conf.server.thumbprints, ctx, port)
        else:
            self._polling = asyncio.create_task(self._poll(conf.server.polling_url))

    async def stop(self) -> None:
        """Stop serving or drop the websocket."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._polling is not None:
            self._polling.cancel()
            await asyncio.gather(self._polling, return_exceptions=True)
            self._polling = None

    # --- listening --------------------------------------------------------------------

    async def _listen(self, port: int) -> int:
        ctx = server_context(
            self._file(agent_config.CERT_FILE),
            self._file(agent_config.KEY_FILE),
            self._file(agent_config.SERVER_CA_FILE),
            require=True,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/rpc/v1", self._rpc)
        app.router.add_route("*", "/packages/v1/{task}/{sha}", self._push)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ctx)
        await site.start()
        server = site._server  # aiohttp keeps the bound sockets there; port 0 becomes a real one
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.answers.calls.append(str(body.get("method")))
        behaviour = self.answers.behaviour(body.get("method", ""))
        if behaviour.kind == "silent":  # not even the headers
            await asyncio.Event().wait()
        answer = web.StreamResponse(headers={"Content-Type": "application/json"})
        data = None if behaviour.kind == "huge" else await self.answers.prepared(body)
        if behaviour.kind == "huge" and behaviour.sized:
            answer.content_length = behaviour.size
        elif data is not None:
            answer.content_length = len(data)
        await answer.prepare(request)
        try:
            async for chunk in self.answers.body(body, data):
                await answer.write(chunk)
        except (ConnectionError, RuntimeError):
            return answer  # the server hung up: what the test wants to see
        await answer.write_eof()
        return answer

    async def _push(self, request: web.Request) -> web.StreamResponse:
        """Package pushes: answered as the ``push`` behaviour says (normal: "I have it")."""
        self.answers.calls.append(f"push.{request.method}")
        behaviour = self.answers.behaviour("push")
        if behaviour.kind == "silent":
            await asyncio.Event().wait()
        answer = web.StreamResponse(status=200)
        if behaviour.kind == "huge":
            answer.content_length = behaviour.size
        await answer.prepare(request)
        if behaviour.kind == "huge" and request.method != "HEAD":
            async for chunk in huge("push", behaviour.size):
                await answer.write(chunk)
        return answer

    # --- polling: a websocket written by hand -------------------------------------------

    async def _poll(self, url: str) -> None:
        parts = urlsplit(url)
        ctx = client_context(
            self._file(agent_config.SERVER_CA_FILE),
            self._file(agent_config.CERT_FILE),
            self._file(agent_config.KEY_FILE),
        )
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=ctx)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket refused: {head[:200]!r}")
        lock = asyncio.Lock()
        jobs: set[asyncio.Task[None]] = set()
        try:
            while True:
                opcode, payload = await _read_frame(reader)
                if opcode == 0x8:
                    return
                if opcode == 0x9:
                    async with lock:
                        await _write_frame(writer, 0xA, payload)
                elif opcode == 0x1:
                    job = asyncio.create_task(self._answer_frame(json.loads(payload), writer, lock))
                    jobs.add(job)
                    job.add_done_callback(jobs.discard)
        finally:
            for job in jobs:
                job.cancel()
            writer.close()

    async def _answer_frame(
        self, request: dict[str, Any], writer: asyncio.StreamWriter, lock: asyncio.Lock
    ) -> None:
        self.answers.calls.append(str(request.get("method")))
        behaviour = self.answers.behaviour(request.get("method", ""))
        if behaviour.kind == "silent":
            return
        data = None if behaviour.kind == "huge" else await self.answers.prepared(request)
        length = behaviour.size if data is None else len(data)
        async with lock:  # a frame's bytes go out together: a dribbled one holds the socket
            writer.write(_frame_header(0x1, length))
            async for chunk in self.answers.body(request, data):
                writer.write(chunk)
                await writer.drain()


def _frame_header(opcode: int, length: int) -> bytes:
    """A masked client frame's header (mask key zero: the payload goes as it is)."""
    first = 0x80 | opcode
    if length < 126:
        return struct.pack("!BB", first, 0x80 | length) + b"\0\0\0\0"
    if length < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, length) + b"\0\0\0\0"
    return struct.pack("!BBQ", first, 0x80 | 127, length) + b"\0\0\0\0"


async def _write_frame(writer: asyncio.StreamWriter, opcode: int, payload: bytes) -> None:
    writer.write(_frame_header(opcode, len(payload)) + payload)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame from the server (servers do not mask)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


def main(argv: list[str] | None = None) -> int:
    """``python -m rigs.rogue_agent --home DIR [--behave METHOD=KIND[:N]]...``: run until killed."""
    parser = argparse.ArgumentParser(prog="rogue_agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="a home `register` (or `tentacle register`) filled")
    parser.add_argument(
        "--behave", action="append", default=[], help="METHOD=KIND[:N], e.g. ping=huge:1500000000"
    )
    args = parser.parse_args(argv)
    rogue = RogueAgent(Path(args.home), dict(Behaviour.parse(b) for b in args.behave))

    async def serve() -> None:
        await rogue.start()
        await asyncio.Event().wait()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
