"""The server's coordinator of one task's phases across its targets: a pure state machine.

Events in (`start`, `target_finished`, `target_lost`, `cancel`, `cancel_unconfirmed`,
`abort`), actions out
(`OpenGate`, `CancelTarget`, `TaskFinished`); like h11, it never sends or waits, the
server does the I/O and persists `snapshot()` after every event.

Gates, in order: 0 ``preAcquisition``, 1 ``acquisition``, then ``step:<index>`` for
each deployment step index in any target's plan, ascending. Gate k+1 opens only when
every target finished gate k with success. A target with nothing to do in a gate
passes it at once and is never sent it.

Task states (`TaskState`; ``failing`` and ``cancelling`` still read ``running`` until
TaskFinished)::

    queued ───start()──▶ running ──every gate passed─────────────────────────▶ success
                           │ a failed or unknown report, or a lost target, in gate k
                           ├──▶ failing: no gate opens; running targets finish ──▶ failed
                           │ cancel()
                           ├──▶ cancelling: CancelTarget to running targets;
                           │    once every running target reported ──────────▶ cancelled
                           │    cancel_unconfirmed(): the ones that did not are
                           │    ``unknown`` ("cancel not confirmed") ──────────▶ cancelled
                           │ abort(): the server cannot go on (its own storage failed)
                           └──▶ CancelTarget to running targets, at once ────────▶ failed

The first cause wins: a failure before cancel() ends ``failed``; a failed report
after cancel() is the cancellation taking effect and ends ``cancelled``.

Target states (`TargetState`), all targets being in the same (current) gate:

    event                          from             to                  action
    gate opens, target has work    waiting/success  running             OpenGate
    gate opens, target has none    waiting/success  success             -
    target_finished(success)       running          success             -
    target_finished(failed)        running          failed (cancelled   -
                                                    when cancelling)
    target_finished(unknown)       running          unknown             -
    target_lost                    waiting/running/ failed              -
                                   success
    cancel()                       running          running             CancelTarget
    cancel_unconfirmed()           running          unknown             -
    abort()                        running          cancelled           CancelTarget
    task ends cancelled            not failed       cancelled           -

A target that fails, is lost, is stopped or does not confirm a cancel keeps the reason
(`TargetProgress.reason`), so that every target's failure is told, not only the first.

A report that matches no open gate of a running target (a duplicate, a stale gate,
an unknown machine) is ignored and returns ``[]``, so retried messages are harmless.

`snapshot()` is a `Snapshot` struct as JSON values; `restore` decodes one (a snapshot
stored when a task not yet started read ``pending`` still restores, as ``queued``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec

from tentacle.protocol.documents import (
    NAME_MAX,
    TEXT,
    DocumentError,
    Name,
    convert_document,
    json_values,
    key_path,
)
from tentacle.protocol.plan import Plan
from tentacle.protocol.states import ACQUISITION as ACQUISITION  # re-exported: the gate names live in states
from tentacle.protocol.states import PRE_ACQUISITION as PRE_ACQUISITION
from tentacle.protocol.states import TargetState, TaskState
from tentacle.protocol.wire import Wire

GateOutcome = Literal["success", "failed", "unknown"]

OUTCOMES: Final = ("success", "failed", "unknown")
SNAPSHOT_VERSION: Final = 1
MAX_REASON: Final = 1000  # keeps errors and snapshots bounded whatever a target reports
MAX_TARGETS: Final = 100_000
CANCEL_NOT_CONFIRMED: Final = "cancel not confirmed"
# Snapshots written before the shared vocabulary (states.py) called a task not yet started "pending".
_LEGACY_TASK_STATES: Final = {"pending": TaskState.QUEUED}


class GateError(DocumentError):
    """A coordinator cannot be built: no targets, mismatched plans, a bad snapshot."""


@dataclass(frozen=True)
class OpenGate:
    """Tell ``machine`` to run its part of gate ``gate_index``."""

    machine: str
    gate_index: int
    gate_name: str


@dataclass(frozen=True)
class CancelTarget:
    """Tell ``machine`` to stop what it is running."""

    machine: str


@dataclass(frozen=True)
class TaskFinished:
    """The task is over; ``error`` says why when it did not succeed."""

    state: TaskState
    error: str | None


Action = OpenGate | CancelTarget | TaskFinished


@dataclass(frozen=True)
class TargetProgress:
    """What one target is doing, as the task view shows it."""

    machine_name: str
    phase: str
    state: TargetState
    reason: str | None = None


@dataclass
class _Target:
    """A target's mutable record: the gates it has work in, its state in the current one, and why."""

    work: frozenset[int]
    state: TargetState = TargetState.WAITING
    reason: str | None = None


# A task's own fields, as `_setup` takes them and a snapshot keeps them: its state, current
# gate, error, first failure and cancel reason.
_Fields = tuple[TaskState, int, str | None, str | None, str | None]
_NOT_STARTED: Final[_Fields] = (TaskState.QUEUED, 0, None, None, None)
_RUNNING: Final = TargetState.RUNNING
# A target in one of these has not failed (yet): it can still be lost, or read cancelled at the end.
_ALIVE: Final = frozenset({TargetState.WAITING, TargetState.RUNNING, TargetState.SUCCESS})


class TaskCoordinator:
    """Holds one task's gates across its targets; see the module docstring for the rules."""

    def __init__(self, task_id: str, plans: Mapping[str, Plan]) -> None:
        """Lay out the gates of ``plans`` (machine name to plan); raises `GateError`."""
        _check_plans(task_id, plans)
        gates, labels, work = _layout(plans)
        self._setup(task_id, gates, labels, {name: _Target(work[name]) for name in plans})

    def _setup(
        self,
        task_id: str,
        gates: tuple[str, ...],
        labels: tuple[str, ...],
        targets: dict[str, _Target],
        fields: _Fields = _NOT_STARTED,
    ) -> None:
        """Set every field: by default to a task that has not started."""
        self.task_id, self.gates, self._labels, self._targets = task_id, gates, labels, targets
        self._state, self._current, self._error, self._failure, self._cancel_reason = fields

    @property
    def state(self) -> TaskState:
        """``queued``, ``running``, ``success``, ``failed`` or ``cancelled``."""
        return self._state

    @property
    def error(self) -> str | None:
        """Why the task failed or was cancelled; None otherwise."""
        return self._error

    @property
    def cancelling(self) -> bool:
        """Whether a cancel was asked for and the task has not ended yet (it still reads running)."""
        return self._cancel_reason is not None and not self._state.final

    @property
    def current_gate(self) -> int:
        """The index of the gate the targets are in."""
        return self._current

    # --- events -------------------------------------------------------------------

    def start(self) -> list[Action]:
        """Open the first gate that any target has work in."""
        if self._state != TaskState.QUEUED:
            return []
        self._state = TaskState.RUNNING
        return self._open(0)

    def target_finished(
        self, machine: str, gate_index: int, outcome: GateOutcome, reason: str = ""
    ) -> list[Action]:
        """``machine`` finished its part of gate ``gate_index``."""
        if outcome not in OUTCOMES:
            raise GateError([("outcome", "must be one of: " + ", ".join(OUTCOMES))])
        target = self._targets.get(machine)
        running = self._state == TaskState.RUNNING and target is not None and target.state == _RUNNING
        if not running or gate_index != self._current or target is None:
            return []
        if outcome == "success":
            target.state = TargetState.SUCCESS
        elif outcome == "unknown":
            target.state, target.reason = TargetState.UNKNOWN, _cut(reason) or "unknown result"
            self._fail(machine, "reported an unknown result", reason)
        else:
            cancelling = self._cancel_reason is not None
            target.state = TargetState.CANCELLED if cancelling else TargetState.FAILED
            target.reason = _cut(reason) or outcome
            self._fail(machine, "failed", reason)
        return self._settle()

    def target_lost(self, machine: str, reason: str) -> list[Action]:
        """``machine`` cannot take part any more; it counts as failed in the current gate."""
        target = self._targets.get(machine)
        if self._state.final or target is None or target.state not in _ALIVE:
            return []
        target.state, target.reason = TargetState.FAILED, _cut(reason) or "lost"
        self._fail(machine, "was lost", reason)
        return self._settle()

    def cancel(self, reason: str) -> list[Action]:
        """Stop the task: cancel running targets; it ends once they have reported."""
        if self._state.final or self._cancel_reason is not None:
            return []
        self._cancel_reason = reason or "cancelled"
        running = self._running()
        return [*(CancelTarget(name) for name in running), *self._settle()]

    def cancel_unconfirmed(self) -> list[Action]:
        """The cancel's grace is over: targets still running read ``unknown``, and the task ends."""
        if self._state.final or self._cancel_reason is None:
            return []
        silent = self._running()
        for name in silent:
            self._targets[name].state = TargetState.UNKNOWN
            self._targets[name].reason = CANCEL_NOT_CONFIRMED
        if silent and self._failure is None:
            self._cancel_reason = _cut(
                f"{self._cancel_reason} ({CANCEL_NOT_CONFIRMED} by {', '.join(silent)})"
            )
        return self._settle()

    def abort(self, reason: str) -> list[Action]:
        """The server cannot go on: stop running targets, end failed (cancelled if cancel came first)."""
        if self._state.final:
            return []
        running = self._running()
        for name in running:
            self._targets[name].state = TargetState.CANCELLED
            self._targets[name].reason = f"stopped by the server: {_cut(reason)}"
        if self._failure is None and self._cancel_reason is None:
            self._failure = f"the server stopped the task in {self._labels[self._current]}: {_cut(reason)}"
        ending = (
            (TaskState.FAILED, self._failure)
            if self._failure
            else (TaskState.CANCELLED, f"cancelled: {self._cancel_reason}")
        )
        return [*(CancelTarget(name) for name in running), *self._finish(*ending)]

    def resume(self) -> list[Action]:
        """The actions to repeat after `restore` (tentacles treat repeats as no-ops)."""
        if self._state.final:
            return [TaskFinished(self._state, self._error)]
        running = self._running()
        if self._cancel_reason is not None:
            return [CancelTarget(name) for name in running]
        return [OpenGate(name, self._current, self.gates[self._current]) for name in running]

    def target_states(self) -> list[TargetProgress]:
        """Each target's phase (gate name, or ``done`` after success) and state."""
        phase = "done" if self._state == TaskState.SUCCESS else self.gates[self._current]
        return [
            TargetProgress(name, phase, target.state, target.reason) for name, target in self._targets.items()
        ]

    # --- transitions --------------------------------------------------------------

    def _running(self) -> list[str]:
        return [name for name, target in self._targets.items() if target.state == _RUNNING]

    def _open(self, gate: int) -> list[Action]:
        """Open ``gate``, passing at once every gate no target has work in."""
        for index in range(gate, len(self.gates)):
            self._current = index
            actions: list[Action] = []
            for name, target in self._targets.items():
                target.state = _RUNNING if index in target.work else TargetState.SUCCESS
                if target.state == _RUNNING:
                    actions.append(OpenGate(name, index, self.gates[index]))
            if actions:
                return actions
        return self._finish(TaskState.SUCCESS, None)

    def _fail(self, machine: str, what: str, reason: str) -> None:
        """Record the task's first failure, unless a cancellation came first."""
        if self._failure is not None or self._cancel_reason is not None:
            return
        detail = f": {reason[:MAX_REASON]}" if reason else ""
        self._failure = f"{machine} {what} in {self._labels[self._current]}{detail}"

    def _settle(self) -> list[Action]:
        """Once no target is running: end the task or open the next gate."""
        if any(target.state == _RUNNING for target in self._targets.values()):
            return []
        if self._failure is not None:
            return self._finish(TaskState.FAILED, self._failure)
        if self._cancel_reason is not None:
            return self._finish(TaskState.CANCELLED, f"cancelled: {self._cancel_reason[:MAX_REASON]}")
        if self._state == TaskState.QUEUED:
            return []
        return self._open(self._current + 1)

    def _finish(self, state: TaskState, error: str | None) -> list[Action]:
        """End the task once; on cancellation, every target not failed reads cancelled."""
        self._state = state
        self._error = error
        if state == TaskState.CANCELLED:
            for target in self._targets.values():
                if target.state in _ALIVE:
                    target.state = TargetState.CANCELLED
        return [TaskFinished(state, error)]

    # --- persistence ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able dict (a `Snapshot`) from which `restore` rebuilds this coordinator exactly."""
        targets = tuple(_snapshot_target(name, target) for name, target in self._targets.items())
        fields = (self._state, self._current, self._error, self._failure, self._cancel_reason)
        return json_values(_snapshot(self.task_id, self.gates, self._labels, fields, targets))

    @classmethod
    def restore(cls, snapshot: object) -> TaskCoordinator:
        """Rebuild a coordinator from `snapshot()`'s dict; raises `GateError` naming what is wrong."""
        decoded = _decode_snapshot(snapshot)
        coordinator = cls.__new__(cls)
        targets = {t.machine_name: _Target(frozenset(t.work), t.state, t.reason) for t in decoded.targets}
        fields = (decoded.state, decoded.current, decoded.error, decoded.failure, decoded.cancel_reason)
        coordinator._setup(decoded.task_id, decoded.gates, decoded.gate_labels, targets, fields)
        return coordinator


def _snapshot_target(name: str, target: _Target) -> SnapshotTarget:
    return SnapshotTarget(
        machine_name=name, work=tuple(sorted(target.work)), state=target.state, reason=target.reason
    )


def _snapshot(
    task_id: str,
    gates: tuple[str, ...],
    labels: tuple[str, ...],
    fields: _Fields,
    targets: tuple[SnapshotTarget, ...],
) -> Snapshot:
    """The `Snapshot` of a coordinator: ``fields`` are its state, gate, error, failure and cancel reason."""
    state, current, error, failure, cancel_reason = fields
    return Snapshot(
        version=SNAPSHOT_VERSION,
        task_id=task_id,
        gates=gates,
        gate_labels=labels,
        state=state,
        current=current,
        error=error,
        failure=failure,
        cancel_reason=cancel_reason,
        targets=targets,
    )


def _decode_snapshot(snapshot: object) -> Snapshot:
    """A stored snapshot, checked (older ones read as today's); raises `GateError`."""
    if isinstance(snapshot, dict) and snapshot.get("state") in _LEGACY_TASK_STATES:
        snapshot = {**snapshot, "state": _LEGACY_TASK_STATES[snapshot["state"]]}
    decoded = convert_document(snapshot, Snapshot, GateError)
    problems = list(decoded.rule_problems())
    if problems:
        raise GateError(problems)
    return decoded


def _cut(reason: str) -> str:
    """A reason as the task keeps it: at most `MAX_REASON` characters."""
    return reason[:MAX_REASON]


# --- layout -------------------------------------------------------------------------


def _check_plans(task_id: str, plans: Mapping[str, Plan]) -> None:
    """Plans must exist, belong to this task and their machine, and agree on step names."""
    problems: list[tuple[str, str]] = []
    if not plans:
        problems.append(("plans", "a task needs at least one target"))
    names: dict[int, str] = {}
    for machine, plan in plans.items():
        path = key_path("plans", machine)
        if plan.task_id != task_id:
            problems.append((f"{path}.taskId", f"must be {task_id!r}"))
        if plan.machine_name != machine:
            problems.append((f"{path}.machineName", f"must be {machine!r}"))
        for step in plan.deployment_steps():
            if names.setdefault(step.index, step.name) != step.name:
                problems.append((f"{path}.steps", f"step {step.index} is named differently"))
    if problems:
        raise GateError(problems)


def _layout(
    plans: Mapping[str, Plan],
) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, frozenset[int]]]:
    """The gate names, their labels for messages, and the gates each target has work in."""
    step_names = {s.index: s.name for p in plans.values() for s in p.deployment_steps()}
    indices = sorted(step_names)
    gates = (PRE_ACQUISITION, ACQUISITION, *(f"step:{i}" for i in indices))
    labels = (PRE_ACQUISITION, ACQUISITION, *(f"step:{i} ({step_names[i]})" for i in indices))
    position = {index: 2 + offset for offset, index in enumerate(indices)}
    work: dict[str, frozenset[int]] = {}
    for machine, plan in plans.items():
        gates_with_work = {position[step.index] for step in plan.deployment_steps()}
        if plan.pre_acquisition_steps():
            gates_with_work.add(0)
        if plan.packages():
            gates_with_work.add(1)
        work[machine] = frozenset(gates_with_work)
    return gates, labels, work


# --- the snapshot -----------------------------------------------------------------------

# A label is "step:<index> (<step name>)": longer than a name by its prefix.
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX + 32, pattern=TEXT)]
Reason = Annotated[str, msgspec.Meta(max_length=4 * MAX_REASON, pattern=TEXT)]


class SnapshotTarget(Wire, frozen=True, kw_only=True):
    """One target in a snapshot: the gates it has work in and its state in the current one."""

    machine_name: Name
    work: tuple[Annotated[int, msgspec.Meta(ge=0)], ...]
    state: TargetState
    reason: Reason | None = None  # snapshots written before reasons were kept have none


class Snapshot(Wire, frozen=True, kw_only=True):
    """A coordinator's whole state, as the server stores it after every event."""

    version: Annotated[int, msgspec.Meta(ge=SNAPSHOT_VERSION, le=SNAPSHOT_VERSION)]
    task_id: Name
    gates: Annotated[tuple[Name, ...], msgspec.Meta(min_length=1)]
    gate_labels: Annotated[tuple[Label, ...], msgspec.Meta(min_length=1)]
    state: TaskState
    current: Annotated[int, msgspec.Meta(ge=0)]
    error: Reason | None = None
    failure: Reason | None = None
    cancel_reason: Reason | None = None
    targets: Annotated[tuple[SnapshotTarget, ...], msgspec.Meta(min_length=1, max_length=MAX_TARGETS)]

    def rule_problems(self) -> Iterator[tuple[str, str]]:
        """What must agree between fields: labels and gates, indices in range, unique machines."""
        count = len(self.gates)
        if len(self.gate_labels) != count:
            yield "gateLabels", "must have one label per gate"
        if self.current >= count:
            yield "current", f"must be a gate index from 0 to {count - 1}"
        seen: set[str] = set()
        for position, target in enumerate(self.targets):
            if target.machine_name in seen:
                yield f"targets[{position}].machineName", "duplicate machine name"
            seen.add(target.machine_name)
            for item, gate in enumerate(target.work):
                if gate >= count:
                    yield f"targets[{position}].work[{item}]", f"must be a gate index from 0 to {count - 1}"
