"""Helpers for tests of the runner's pure machine: reading its actions and tasks, and tasks as
task.json would give them back."""

from __future__ import annotations

from collections.abc import Sequence

from tentacle.protocol.runner_machine import Action, Gate, RunGate, RunnerMachine, Stop, TaskEntry
from tentacle.protocol.states import GateState, TaskState

ONE_STEP = frozenset({"step:1"})
GATE_INDEX = {"preAcquisition": 0, "acquisition": 1, "step:1": 2, "step:2": 3}


def runs(actions: Sequence[Action]) -> list[tuple[str, int]]:
    """The (task, gate index) of every RunGate."""
    return [(a.task_id, a.index) for a in actions if isinstance(a, RunGate)]


def of(actions: Sequence[Action], kind: type[Action]) -> list[Action]:
    """The actions of one kind, in order."""
    return [a for a in actions if isinstance(a, kind)]


def entry_of(m: RunnerMachine, task_id: str) -> TaskEntry:
    """The task the machine holds under this id."""
    entry = m.task(task_id)
    assert entry is not None
    return entry


def state(m: RunnerMachine, task_id: str) -> str:
    """A task's state."""
    return entry_of(m, task_id).state


def gate(m: RunnerMachine, task_id: str, index: int) -> tuple[str, str]:
    """A gate's (state, reason)."""
    found = entry_of(m, task_id).gates[index]
    return found.state, found.reason


def running(m: RunnerMachine, task_id: str = "A", work: frozenset[str] = ONE_STEP) -> RunnerMachine:
    """A machine where ``task_id`` was started (and so holds the free slot)."""
    m.start(task_id, work)
    return m


def on_disk(
    task_id: str,
    arrival: int,
    state: str,
    gates: Sequence[tuple[int, str, str]] = (),
    work: frozenset[str] = ONE_STEP,
    stop: Stop | None = None,
) -> TaskEntry:
    """A task entry as task.json would give it back; gates as (index, name, state)."""
    found = {index: Gate(index, name, GateState(gate_state)) for index, name, gate_state in gates}
    return TaskEntry(task_id, arrival, work, TaskState(state), found, stop)
