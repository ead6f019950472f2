"""Log lines of every running task, stored in batches by one writer.

How it works. A task's driver hands each answer's lines to `put` and goes straight back
to its long poll: storing never holds up the next status call, nor the gate results and
cancels that travel with it. One writer takes what every target queued (up to
`BATCH_LINES` lines) and stores it in one transaction (`log_rows.store`, which keeps each
target under the log limit). A target with `BACKLOG_LINES` lines waiting makes its
driver wait in `put`: memory stays bounded when a flood outruns the disk.

`flush` waits until what a target put so far is stored; a driver calls it before it
reports a gate's success, so that a success never reaches the task before the lines
that led to it. A write that fails for good (a full disk) is kept against each target
it held, and that target's next `put` or `flush` raises it: its driver then fails the
task with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from typing import Final

from server_shim.dispatch import books
from server_shim.store import log_rows
from server_shim.store.database import Database
from server_shim.store.log_rows import Batch, Key, LogRow, LogTotals
from tentacle.common.logs import event
from tentacle.errors import StorageError
from tentacle.protocol.masking import Masker
from tentacle.protocol.rpc_messages import StatusResult

log = logging.getLogger("server_shim.dispatch.log_sink")
BATCH_LINES: Final = 10_000  # lines per transaction: big enough to be fast, short enough not to hold others
BACKLOG_LINES: Final = 5_000  # lines one target may have waiting before its driver waits


class LogSink:
    """Stores log lines for every task of this server; one writer, batched transactions."""

    def __init__(self, db: Database, limit: int) -> None:
        self.db, self.limit = db, limit
        self._queue: deque[tuple[Batch, int]] = deque()  # (batch, its ticket)
        self._waiting: Counter[Key] = Counter()  # lines queued per target
        self._tickets: Counter[Key] = Counter()  # batches put per target
        self._done: dict[Key, int] = {}  # the last ticket written (or failed) per target
        self._totals: dict[Key, LogTotals] = {}
        self._failed: dict[Key, StorageError] = {}
        self._changed = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.stored_lines = 0  # what the benchmark reads

    async def put(self, task_id: str, machine: str, lines: list[LogRow]) -> None:
        """Queue a target's lines for storing; waits while that target has a full backlog."""
        key = (task_id, machine)
        while True:
            self._check(key)
            if self._waiting[key] < BACKLOG_LINES:
                break
            await self._changed.wait()
        if not lines:
            return
        self._tickets[key] += 1
        self._waiting[key] += len(lines)
        self._queue.append((Batch(task_id, machine, lines), self._tickets[key]))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._run())

    async def flush(self, task_id: str, machine: str) -> None:
        """Wait until everything put for this target is stored; raises the failure that stopped it."""
        key = (task_id, machine)
        wanted = self._tickets[key]
        while self._done.get(key, 0) < wanted:
            self._check(key)
            await self._changed.wait()
        self._check(key)

    def forget(self, task_id: str) -> None:
        """The task is over: drop what is kept about its targets."""
        for table in (self._waiting, self._tickets, self._done, self._totals, self._failed):
            for key in [key for key in table if key[0] == task_id]:
                del table[key]

    async def close(self) -> None:
        """Stop the writer (what is still queued is read again from the tentacles after a restart)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def _check(self, key: Key) -> None:
        failed = self._failed.get(key)
        if failed is not None:
            raise failed

    async def _run(self) -> None:
        """Write whatever is queued, batch after batch, until the queue is empty."""
        while self._queue:
            taken = self._take()
            try:
                after = await books.write(
                    self.db, log_rows.store, [b for b, _ in taken], self._known(taken), self.limit
                )
            except Exception as exc:  # whatever it is, the lines' drivers hear it: none waits forever
                error = (
                    exc if isinstance(exc, StorageError) else StorageError(f"cannot store log lines: {exc}")
                )
                event(
                    log,
                    "log.store_failed",
                    logging.ERROR,
                    lines=sum(len(b.lines) for b, _ in taken),
                    reason=error.message,
                )
                self._failed.update({batch.key: error for batch, _ in taken})
            else:
                self._totals.update(after)
                self.stored_lines += sum(len(b.lines) for b, _ in taken)
            for batch, ticket in taken:
                self._waiting[batch.key] -= len(batch.lines)
                self._done[batch.key] = ticket
            self._pulse()

    def _take(self) -> list[tuple[Batch, int]]:
        taken = [self._queue.popleft()]
        count = len(taken[0][0].lines)
        while self._queue and count + len(self._queue[0][0].lines) <= BATCH_LINES:
            batch = self._queue.popleft()
            taken.append(batch)
            count += len(batch[0].lines)
        return taken

    def _known(self, taken: list[tuple[Batch, int]]) -> dict[Key, LogTotals]:
        return {batch.key: self._totals[batch.key] for batch, _ in taken if batch.key in self._totals}

    def _pulse(self) -> None:
        """Wake everyone waiting on progress (each waits on the event it saw)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def masked_rows(masker: Masker, status: StatusResult) -> list[LogRow]:
    """A status answer's lines as the store takes them, masked again (and valid UTF-8)."""
    mask = masker.mask
    return [
        (line.seq, line.time, line.stream.value, _text(line.step), _text(mask(line.text)))
        for line in status.log
    ]


def _text(value: str) -> str:
    """``value`` storable as UTF-8 text in either database: a lone surrogate (JSON allows
    ``\\ud800``) and a NUL (which PostgreSQL's text cannot hold) become U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
