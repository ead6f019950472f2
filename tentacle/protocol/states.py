"""The one vocabulary of states, shared by the server, the tentacle and the API.

A task (on the server, in the API, and on each tentacle) is::

    queued ──▶ running ──▶ success | failed | cancelled

A target (one machine's part in a task, on the server) is::

    waiting ──▶ running ──▶ success | failed | cancelled | unknown

and a gate (one phase of one task on one tentacle) is::

    pending ──▶ running ──▶ success | failed | cancelled | unknown

``unknown``: the tentacle restarted while the gate ran; its result cannot be known, and
it is never run again. StrEnums: each member equals its string, and travels as it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class TaskState(StrEnum):
    """A task's state, everywhere."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Whether the task has ended."""
        return self in FINAL_TASK_STATES


FINAL_TASK_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED})


class TargetState(StrEnum):
    """One machine's part in a task."""

    WAITING = "waiting"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class GateState(StrEnum):
    """One gate (phase) of a task on a tentacle."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


# The gates before the step gates (``step:<index>``), by name: the server's coordinator
# opens them, task.gate carries the names, and a tentacle runs them.
PRE_ACQUISITION: Final = "preAcquisition"
ACQUISITION: Final = "acquisition"
