"""One task's job on this tentacle: its record, its log, its masker and its cancellation.

The rules (slot, queue, gate states) are `tentacle.protocol.runner_machine`'s; a `Job`
is what one task has besides: the record that task.json holds (saved through the state
writer thread, in order), the log feed, the masker built from the plan's sensitive
values, the cancel event a running gate watches, and the long polls of task.status.

Durability: `changed` bumps the version, wakes the long polls and queues a save; `saved`
waits for the last save and raises its error, so a handler that awaits it answers only
once what it answers about is on disk. A save records the log position of every line
written before it (it reads the position in the writer thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.masking import Masker
from tentacle.protocol.plan import Plan
from tentacle.protocol.rpc_messages import MAX_LOG_LINES, GateReport, LogStream, StatusResult, reported
from tentacle.protocol.runner_machine import TaskEntry
from tentacle.runner.log_feed import LogFeed
from tentacle.runner.state_writer import StateWriter
from tentacle.runner.task_log import TaskLog
from tentacle.runner.task_store import TaskRecord, TaskStore, encode

log = logging.getLogger("tentacle.runner.runner")

# The log lines of one answer, as JSON: well under the 16 MiB message limit, whatever
# the lines hold (a line escaped or lengthened by masking counts at its encoded size).
MAX_LOG_BYTES: Final = 4 * 1024 * 1024


class Job:
    """One task: its record, log, masker, cancellation and the gate it runs (if any)."""

    def __init__(self, record: TaskRecord, log_file: TaskLog, store: TaskStore, writer: StateWriter) -> None:
        """A job over ``record`` whose log is ``log_file``; saves go through ``writer``."""
        self.record = record
        self.masker = Masker(record.plan.sensitive_values())
        self.log = LogFeed(log_file, writer, self.wake)
        self.cancel = asyncio.Event()
        self.stop_reason = ""
        self.gate_job: asyncio.Task[None] | None = None
        self._store = store
        self._writer = writer
        self._changed = asyncio.Event()
        self._last_save: asyncio.Future[None] | None = None
        self._lines_before_change = 0  # lines emitted before the last state change

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.record.task_id

    @property
    def plan(self) -> Plan:
        """The plan the server sent."""
        return self.record.plan

    @property
    def entry(self) -> TaskEntry:
        """The machine's view of the task (state, gates, stop): read it, never write it."""
        return self.record.entry

    # --- state changes and saves ----------------------------------------------------------

    def wake(self) -> None:
        """Wake every long poll of this task (they re-check what they wait for)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Future[None]:
        """The record changed: bump the version, wake the long polls, queue a save (returned)."""
        self.record.version += 1
        self._lines_before_change = self.log.emitted
        self.wake()
        document = self.record.to_json()  # taken now: a later save carries a later state
        saving = self._writer.submit(self._write, document)
        saving.add_done_callback(self._saved)
        self._last_save = saving
        return saving

    def _write(self, document: dict[str, Any]) -> None:
        """Save task.json with the log's position (in the writer thread, after the lines before)."""
        document["logSeq"], document["logBytes"] = self.log.file.next_seq, self.log.file.size
        self._store.save(self.task_id, encode(document))

    def _saved(self, saving: asyncio.Future[None]) -> None:
        """Log a save that failed (the state stays in memory; the next save may succeed)."""
        error = None if saving.cancelled() else saving.exception()
        if error is not None:
            reason = error.message if isinstance(error, TentacleError) else repr(error)
            event(log, "task.save_failed", logging.ERROR, task=self.task_id, reason=reason)

    async def saved(self) -> None:
        """Return once the last save is on disk; raise its error when it failed."""
        if self._last_save is not None:
            await asyncio.shield(self._last_save)

    # --- log and cancellation -----------------------------------------------------------------

    def system(self, step: str, text: str) -> None:
        """A line the runner itself writes, masked like script output."""
        self.log.emit(LogStream.SYSTEM, self.masker.mask(step), self.masker.mask(text))

    def stop(self, reason: str) -> None:
        """Stop the running gate's work; the first reason given is the one it reports."""
        if not self.cancel.is_set():
            self.stop_reason = reason
            self.cancel.set()

    def close(self) -> None:
        """Release the log's file handle (reopened if another line comes)."""
        self.log.close()

    # --- task.status --------------------------------------------------------------------------

    async def status(self, since: int, version: int, wait: float) -> StatusResult:
        """task.status: wait up to ``wait`` s for news, then the state and the lines after ``since``."""
        await self._news(since, version, wait)
        state, shown = self.entry.state, self.record.version
        gates = [
            GateReport(index=gate.index, name=gate.name, state=gate.state, reason=gate.reason)
            for gate in self.entry.shown_gates()
        ]
        await self.log.settled(self._lines_before_change)  # lines that came before this state
        lines, more = await self.log.lines_after(since, MAX_LOG_LINES, MAX_LOG_BYTES)
        return StatusResult(
            task_id=self.task_id, state=reported(state), version=shown, gates=gates, log=lines, more=more
        )

    async def _news(self, since: int, version: int, wait: float) -> None:
        """Return when the version passed ``version``, a line after ``since`` is visible, or in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            changed = self._changed  # taken before the check, so no wake-up falls in between
            if self.record.version > version or self.log.next_seq - 1 > since:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()
