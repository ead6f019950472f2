"""The tasks of this server that wait to start, oldest first, and the timer that wakes them.

How it works. A queued task starts when it is due (`timetable.due`) and none of its
machines is busy with an earlier task; one past its ``noRunAfter`` leaves the queue to
be cancelled. `sweep` hands out both kinds one at a time, in queue order, so the
dispatcher acts on each before the next is looked at; `arm` sets one timer for the next
``runAt`` or ``noRunAfter`` of what still waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from server_shim.dispatch import timetable
from server_shim.store.task_rows import TaskRecord


class TaskQueue:
    """Queued tasks in the order they came, and the one timer for the next that becomes due or expires."""

    def __init__(self) -> None:
        self.records: list[TaskRecord] = []
        self._wake: asyncio.TimerHandle | None = None  # the next runAt or noRunAfter of a queued task

    def holds(self, task_id: str) -> bool:
        """Whether the task waits here."""
        return any(r.task_id == task_id for r in self.records)

    def find(self, task_id: str) -> TaskRecord | None:
        """The queued task with this id, if it waits here."""
        return next((r for r in self.records if r.task_id == task_id), None)

    def add(self, record: TaskRecord) -> None:
        """Queue a task behind those already waiting."""
        self.records.append(record)

    def remove(self, record: TaskRecord) -> None:
        """Take a task out of the queue (it was cancelled)."""
        self.records.remove(record)

    def clear(self) -> None:
        """Forget every queued task (another node owns them now)."""
        self.records.clear()

    def sweep(self, now: float, busy: set[tuple[str, str]]) -> Iterator[tuple[TaskRecord, bool]]:
        """Take out, oldest first, each task that may start now (True) or has expired (False).

        A task that may start takes its machines from ``busy``, so a later one that shares a
        machine waits. Lazy: each task leaves the queue only when it is handed out.
        """
        for record in list(self.records):
            if timetable.expired(record, now):
                self.records.remove(record)
                yield record, False
                continue
            keys = record.machine_keys
            if not timetable.due(record, now) or keys & busy:
                continue
            self.records.remove(record)
            busy |= keys
            yield record, True

    def arm(self, now: float, wake: Callable[[], None]) -> None:
        """Call ``wake`` at the next time a queued task becomes due or expires (one timer at a time)."""
        self.disarm()
        at = timetable.wake_at(self.records, now)
        if at is not None:
            self._wake = asyncio.get_running_loop().call_later(at - now + 0.01, wake)

    def disarm(self) -> None:
        """Stop the timer, if one is set."""
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
