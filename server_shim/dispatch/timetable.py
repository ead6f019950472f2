"""When queued tasks may start: ``runAt`` and ``noRunAfter`` (pure rules, no I/O).

A task with ``runAt`` waits in the queue, visibly ``queued``, until that time; one with
``noRunAfter`` that is still queued after that time (not yet due, or its machines busy
all along) is cancelled with the reason. Both live in the task's row, so a restarted
server keeps the schedule. The dispatcher asks `due` and `expired` at every scheduling
pass and sleeps until `wake_at`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from server_shim.store.task_rows import TaskRecord


def iso(stamp: float) -> str:
    """An epoch time as ISO 8601 UTC, to the second (how the API shows times)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def due(record: TaskRecord, now: float) -> bool:
    """Whether the task may start now (no ``runAt``, or it has come)."""
    return record.run_at is None or record.run_at <= now


def expired(record: TaskRecord, now: float) -> bool:
    """Whether a still-queued task has passed its ``noRunAfter``."""
    return record.no_run_after is not None and record.no_run_after < now


def expiry_reason(record: TaskRecord) -> str:
    """Why an expired task was cancelled."""
    return f"not started before noRunAfter {iso(record.no_run_after or 0.0)}"


def wake_at(queue: Iterable[TaskRecord], now: float) -> float | None:
    """The next time a queued task becomes due or expires, or None when nothing waits on time."""
    times = [
        stamp
        for record in queue
        for stamp in (record.run_at, record.no_run_after)
        if stamp is not None and stamp >= now
    ]
    return min(times, default=None)
