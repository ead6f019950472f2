"""A script's output pipes: bytes in, masked lines out, at the pace the log can take.

How it works::

    pipe read end (on the event loop) ──▶ LineSplitter ──▶ decode ──▶ mask ──▶ on_lines
            ▲                                  │
            └── pause_reading while the sink is full, resume when it has room

A line is at most `LINE_LIMIT` bytes: a longer one is split (on a UTF-8 boundary), so
memory stays bounded whatever the script prints (a gigabyte without a newline is
16,384 lines). A secret that straddles such a split is not masked; no real secret is
64 KiB from the start of a line.

Flow control, with an `OutputSink` (the task's log, tentacle.runner.log_feed): when the
sink is `full`, the pipes stop reading until it has room (the script blocks on its own
output meanwhile), so a step printing faster than the log is written costs time, not
memory. When the sink is `dropping` (its log reached its cap) the pipes only count the
lines that arrive (``bytes.count``, at memory speed) and hand the count on. After the
script exits, `drain` reads what it left for `DRAIN_AFTER_EXIT` seconds of time not
spent waiting for room, so a daemon holding the pipe open cannot keep the step alive.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final, Protocol

from tentacle.protocol.masking import Masker
from tentacle.protocol.rpc_messages import LogStream

LINE_LIMIT: Final = 64 * 1024
DRAIN_AFTER_EXIT: Final = 0.5
POLL: Final = 0.05

# Called with each read's lines, in order: (stdout or stderr, the lines, masked).
OnLines = Callable[[LogStream, list[str]], None]


class OutputSink(Protocol):
    """Where the lines go, as far as flow control needs it (tentacle.runner.log_feed.LogFeed)."""

    def full(self) -> bool:
        """Whether the pipes should stop reading for now."""

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call ``resume()`` once there is room again."""

    def dropping(self) -> bool:
        """Whether output lines are only counted now."""

    def drop(self, count: int) -> None:
        """``count`` lines arrived and were only counted."""


@dataclass(frozen=True)
class ScriptOutput:
    """Where the pipes' lines go: ``on_lines`` after ``masker``, paced by ``sink``."""

    on_lines: OnLines
    masker: Masker
    sink: OutputSink | None


async def drain(pipes: list[OutputPipe]) -> None:
    """Let the pipes deliver what is left, for DRAIN_AFTER_EXIT s not spent waiting for room, then close them.

    What the script left in a pipe is ours to read, however long the log takes to make
    room for it; a daemon that keeps the pipe open and writing gets the time budget.
    """
    loop = asyncio.get_running_loop()
    budget, last = DRAIN_AFTER_EXIT, loop.time()
    while budget > 0 and not all(pipe.closed.done() for pipe in pipes):
        await asyncio.wait([pipe.closed for pipe in pipes], timeout=min(budget, POLL))
        now = loop.time()
        if not any(pipe.paused for pipe in pipes):
            budget -= now - last
        last = now
    for pipe in pipes:
        pipe.close()
    await asyncio.gather(*(pipe.closed for pipe in pipes))


class OutputPipe(asyncio.Protocol):
    """One output pipe of the script: bytes in, masked lines out to `on_lines`."""

    def __init__(self, stream: LogStream, output: ScriptOutput) -> None:
        """A pipe for `stream` (stdout or stderr); `open` creates the real one."""
        self.stream = stream
        self.write_fd = -1
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.paused = False  # reading stopped until the sink has room
        self._output = output
        self._splitter = LineSplitter()
        self._transport: asyncio.ReadTransport | None = None

    @classmethod
    async def open(cls, stream: LogStream, output: ScriptOutput) -> OutputPipe:
        """Create the OS pipe and start reading its read end on the event loop."""
        pipe = cls(stream, output)
        read_fd, pipe.write_fd = os.pipe()  # both ends close-on-exec (PEP 446)
        reader = _reader(read_fd)
        try:
            await asyncio.get_running_loop().connect_read_pipe(lambda: pipe, reader)
        except BaseException:
            reader.close()
            pipe.close_write_end()
            raise
        return pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport so that we can stop reading."""
        assert isinstance(transport, asyncio.ReadTransport)  # connect_read_pipe gives one
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        """Hand each line on, masked (or only count them); stop reading while the sink is full."""
        sink = self._output.sink
        if sink is not None and sink.dropping():
            sink.drop(self._splitter.skip(data))
        else:
            self._emit(self._splitter.feed(data))
        if sink is not None and not self.paused and sink.full() and self._transport is not None:
            self.paused = True
            self._transport.pause_reading()
            sink.when_room(self._resume)

    def _resume(self) -> None:
        """The sink has room again: read on."""
        self.paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Hand on a last line without a newline, then tell `_drain` we are done."""
        self.paused = False
        rest = self._splitter.flush()
        sink = self._output.sink
        if rest is not None and sink is not None and sink.dropping():
            sink.drop(1)
        elif rest is not None:
            self._emit([rest])
        if not self.closed.done():
            self.closed.set_result(None)

    def close_write_end(self) -> None:
        """Close our copy of the write end: the child holds its own."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        """Stop reading (the read end is closed; a writer still there gets EPIPE)."""
        self.close_write_end()
        if self._transport is not None:
            self._transport.close()

    def _emit(self, lines: list[bytes]) -> None:
        """Decode, mask, deliver."""
        if lines:
            mask = self._output.masker.mask
            self._output.on_lines(self.stream, [mask(line.decode("utf-8", "replace")) for line in lines])


def _reader(fd: int) -> BinaryIO:
    """A file object for a pipe's read end, as connect_read_pipe wants one."""
    return os.fdopen(fd, "rb", buffering=0)


class LineSplitter:
    """Splits a byte stream into lines of at most `limit` bytes (without line endings).

    A longer line is cut into pieces, each cut moved back to a UTF-8 character boundary
    so that no character is broken in two. A trailing CR before LF is dropped.
    """

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        """An empty splitter."""
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take more bytes; return the lines they completed."""
        self._buffer += data
        return self._split_short() + self._split()

    def _split_short(self) -> list[bytes]:
        """The complete lines, when none is over the limit (the common case, in C); else none."""
        buffer = self._buffer
        last = buffer.rfind(b"\n")
        if last < 0:
            return []
        lines = bytes(buffer[:last]).split(b"\n")
        if max(map(len, lines)) > self._limit:
            return []  # _split cuts them
        if buffer.find(b"\r", 0, last) >= 0:
            lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
        del buffer[: last + 1]
        return lines

    def _split(self) -> list[bytes]:
        """The lines in the buffer, long ones cut at the limit (on a UTF-8 boundary)."""
        buffer, limit = self._buffer, self._limit
        lines: list[bytes] = []
        start = 0  # consume by index and delete once: deleting per line is quadratic
        while True:
            newline = buffer.find(b"\n", start, start + limit + 1)
            if newline >= 0:
                end = newline - 1 if newline > start and buffer[newline - 1] == 0x0D else newline
                lines.append(bytes(buffer[start:end]))
                start = newline + 1
            elif len(buffer) - start > limit:
                cut = _utf8_boundary(buffer, start + limit, start)
                lines.append(bytes(buffer[start:cut]))
                start = cut
            else:
                break
        del buffer[:start]
        return lines

    def skip(self, data: bytes) -> int:
        """Take more bytes without keeping them: how many lines they ended (a newline ends one)."""
        ended = data.count(b"\n")
        tail = data[data.rfind(b"\n") + 1 :]
        if ended:
            self._buffer[:] = tail[:1]  # only whether a line is open matters now
        elif tail and not self._buffer:
            self._buffer[:] = tail[:1]
        return ended

    def flush(self) -> bytes | None:
        """What is left at the end of the stream, if anything."""
        if not self._buffer:
            return None
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def _utf8_boundary(buffer: bytearray, cut: int, start: int) -> int:
    """Move a cut back (at most 3 bytes) so it does not fall inside a UTF-8 character."""
    lowest = max(start + 1, cut - 3)
    while cut > lowest and buffer[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut
