"""A task's log as the event loop sees it: lines emitted at once, written off the loop, shown once written.

How it works::

    emit() ──▶ waiting ──one bounded batch at a time──▶ state writer thread: number, write, flush
                                                          │
    long polls ◀── wake ◀── recent lines, next_seq ◀──────┘ (back on the loop)

Lines keep the order they were emitted in (one batch in flight; the next one takes up
to `BATCH_LINES` lines or `BATCH_BYTES` of what waited meanwhile, so a save of
task.json, which goes through the same thread, never waits behind more than one
batch). A line is visible to nobody (not in `lines_after`, not counted by `next_seq`)
before it is in log.jsonl, so an answer never shows a line a crash could take back. A
line the disk refused is counted as lost (`TaskLog`) without using a number. `settled`
waits until the lines emitted up to a point are written, dropped or lost: a status
answer holds every line emitted before the state change it shows.

Flow control (the `tentacle.runner.scripts.OutputSink` a script's pipes write into):
`full` says that more than `HIGH_WATER` bytes wait, and the pipes stop reading (the
script then blocks on its own output) until `when_room` calls them back, so memory
stays bounded however fast a step prints. Once the log reached its cap, `dropping`
says so, and the pipes only count the lines they would have emitted (`drop`).

Recent lines (the last `RECENT_LINES`) are served from memory; older ones are read from
the file in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Final

from tentacle.common.logs import event
from tentacle.protocol.rpc_messages import LogLine, LogStream
from tentacle.runner.state_writer import StateWriter
from tentacle.runner.task_log import Entry, TaskLog, collect_lines, line_size

log = logging.getLogger("tentacle.runner.runner")

RECENT_LINES: Final = 2000
BATCH_LINES: Final = 8192
BATCH_BYTES: Final = 1024 * 1024
HIGH_WATER: Final = 2 * 1024 * 1024  # bytes of text waiting before the pipes stop reading
_LINE_COST: Final = 64  # what a line costs besides its text, in the waiting count


class LogFeed:
    """One task's log on the loop side; its `TaskLog` file is only touched by the writer thread."""

    def __init__(self, file: TaskLog, writer: StateWriter, on_lines: Callable[[], None]) -> None:
        """A feed over ``file``; ``on_lines()`` is called when written lines become visible."""
        self.file = file
        self.next_seq = file.next_seq  # of the lines visible so far
        self._writer = writer
        self._on_lines = on_lines
        self._recent: deque[LogLine] = deque(maxlen=RECENT_LINES)
        self._waiting: deque[Entry] = deque()
        self._waiting_bytes = 0
        self._in_flight = False
        self._emitted = 0
        self._settled = 0
        self._dropped_here = 0  # output lines counted by the pipes once the log was capped
        self._dropping = file.capped
        self._room: list[Callable[[], None]] = []
        self._progress = asyncio.Event()

    def emit(self, stream: LogStream, step: str, text: str) -> None:
        """Queue a line (already masked) for writing; it is shown once written."""
        self.emit_many(stream, step, [text])

    def emit_many(self, stream: LogStream, step: str, texts: list[str]) -> None:
        """Queue lines (already masked) of one stream and step, in order; each is shown once written."""
        self._emitted += len(texts)
        if self._dropping and stream is not LogStream.SYSTEM:
            self._dropped_here += len(texts)
            self._settled += len(texts)
            return
        now = time.time()
        self._waiting.extend([(now, stream, step, text) for text in texts])
        self._waiting_bytes += sum(map(len, texts)) + _LINE_COST * len(texts)
        if not self._in_flight:
            self._hand_over()

    # --- flow control (tentacle.runner.scripts.OutputSink) --------------------------------

    def full(self) -> bool:
        """Whether so much waits that the script's pipes should stop reading."""
        return self._waiting_bytes >= HIGH_WATER

    def when_room(self, resume: Callable[[], None]) -> None:
        """Call ``resume()`` once the waiting lines fell below the mark (at once if they are)."""
        if self.full():
            self._room.append(resume)
        else:
            resume()

    def dropping(self) -> bool:
        """Whether output lines are only counted now (the log reached its cap)."""
        return self._dropping

    def drop(self, count: int) -> None:
        """``count`` output lines were dropped by the pipes without being emitted."""
        self._dropped_here += count

    @property
    def dropped(self) -> int:
        """Output lines not kept because the log reached its cap."""
        return self.file.dropped + self._dropped_here

    @property
    def lost(self) -> int:
        """Lines the disk did not take (see `TaskLog`)."""
        return self.file.lost

    # --- batches --------------------------------------------------------------------------

    def _hand_over(self) -> None:
        """Give the first waiting lines, up to a batch, to the writer thread."""
        batch: list[Entry] = []
        size = 0
        while self._waiting and len(batch) < BATCH_LINES and size < BATCH_BYTES:
            entry = self._waiting.popleft()
            batch.append(entry)
            size += len(entry[3]) + _LINE_COST
        self._waiting_bytes -= size
        self._in_flight = True
        written = self._writer.submit(self.file.append_many, batch)
        written.add_done_callback(functools.partial(self._written, len(batch)))

    def _written(self, count: int, written: asyncio.Future[list[LogLine]]) -> None:
        """A batch is written (or refused): show its lines, then hand over the next batch."""
        self._in_flight = False
        lines: list[LogLine] = []
        if not written.cancelled() and (error := written.exception()) is not None:
            event(log, "task.log_write_failed", logging.ERROR, path=self.file.path, reason=repr(error))
        elif not written.cancelled():
            lines = written.result()
        self._settled += count
        self._dropping = self.file.capped
        self._recent.extend(lines)
        if lines:
            self.next_seq = lines[-1].seq + 1
            self._on_lines()
        self._progress.set()
        self._progress = asyncio.Event()
        if self._waiting:
            self._hand_over()
        if self._room and not self.full():
            resumes, self._room = self._room, []
            for resume in resumes:
                resume()

    @property
    def emitted(self) -> int:
        """How many lines were emitted so far (written, dropped, lost or waiting)."""
        return self._emitted

    async def settled(self, count: int | None = None) -> None:
        """Return once the first ``count`` lines emitted (default: all so far) are written or dropped."""
        target = self._emitted if count is None else count
        while self._settled < target:
            await self._progress.wait()

    async def lines_after(self, since: int, limit: int, max_bytes: int) -> tuple[list[LogLine], bool]:
        """Visible lines after ``since``: from memory when recent, else from the file in a thread."""
        found = self._recent_after(since, limit, max_bytes)
        if found is None:
            found = await asyncio.to_thread(self.file.read_after, since, limit, max_bytes, self.next_seq)
        return found

    def _recent_after(self, since: int, limit: int, max_bytes: int) -> tuple[list[LogLine], bool] | None:
        """Lines with seq > since from memory, or None when they must be read from the file."""
        if since + 1 >= self.next_seq:
            return [], False
        if not self._recent or self._recent[0].seq > since + 1:
            return None
        start = max(since + 1 - self._recent[0].seq, 0)
        sized = ((line, line_size(line)) for line in islice(self._recent, start, None))
        return collect_lines(sized, since, self.next_seq, limit, max_bytes)

    def close(self) -> None:
        """Release the file's append handle once the lines before are written (reopened if needed)."""
        self._writer.submit(self.file.close)
