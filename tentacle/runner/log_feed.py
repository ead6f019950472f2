"""A task's log as the event loop sees it: lines emitted at once, written off the loop, shown once written.

How it works::

    emit() ──▶ waiting ──one batch at a time──▶ state writer thread: number, write, flush
                                                          │
    long polls ◀── wake ◀── recent lines, next_seq ◀──────┘ (back on the loop)

Lines keep the order they were emitted in (one batch in flight; the next one takes
whatever waited meanwhile). A line is visible to nobody (not in `lines_after`, not
counted by `next_seq`) before it is in log.jsonl, so an answer never shows a line a
crash could take back. A line the disk refused is dropped (and logged) without using
a number. `settled` waits until the lines emitted up to a point are written or dropped:
a status answer holds every line emitted before the state change it shows.

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
from tentacle.runner.state_writer import StateWriter
from tentacle.runner.task_log import Entry, LogLine, TaskLog, collect_lines

log = logging.getLogger("tentacle.runner.runner")

RECENT_LINES: Final = 2000


class LogFeed:
    """One task's log on the loop side; its `TaskLog` file is only touched by the writer thread."""

    def __init__(self, file: TaskLog, writer: StateWriter, on_lines: Callable[[], None]) -> None:
        """A feed over ``file``; ``on_lines()`` is called when written lines become visible."""
        self.file = file
        self.next_seq = file.next_seq  # of the lines visible so far
        self._writer = writer
        self._on_lines = on_lines
        self._recent: deque[LogLine] = deque(maxlen=RECENT_LINES)
        self._waiting: list[Entry] = []
        self._in_flight = False
        self._emitted = 0
        self._settled = 0
        self._progress = asyncio.Event()

    def emit(self, stream: str, step: str, text: str) -> None:
        """Queue a line (already masked) for writing; it is shown once written."""
        self._waiting.append((time.time(), stream, step, text))
        self._emitted += 1
        if not self._in_flight:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the waiting lines to the writer thread as one batch."""
        batch, self._waiting = self._waiting, []
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
        self._recent.extend(lines)
        if lines:
            self.next_seq = lines[-1].seq + 1
            self._on_lines()
        self._progress.set()
        self._progress = asyncio.Event()
        if self._waiting:
            self._hand_over()

    @property
    def emitted(self) -> int:
        """How many lines were emitted so far (written, dropped or waiting)."""
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
        return collect_lines(islice(self._recent, start, None), since, self.next_seq, limit, max_bytes)

    def close(self) -> None:
        """Release the file's append handle once the lines before are written (reopened if needed)."""
        self._writer.submit(self.file.close)
