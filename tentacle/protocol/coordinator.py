"""The server's coordinator of one task's phases across its targets: a pure state machine.

Events in (`start`, `target_finished`, `target_lost`, `cancel`), actions out
(`OpenGate`, `CancelTarget`, `TaskFinished`); like h11, it never sends or waits, the
server does the I/O and persists `snapshot()` after every event.

Gates, in order: 0 ``preAcquisition``, 1 ``acquisition``, then ``step:<index>`` for
each deployment step index in any target's plan, ascending. Gate k+1 opens only when
every target finished gate k with success. A target with nothing to do in a gate
passes it at once and is never sent it.

Task states (``failing`` and ``cancelling`` still read ``running`` until TaskFinished)::

    pending ──start()──▶ running ──every gate passed─────────────────────────▶ success
                           │ a failed or unknown report, or a lost target, in gate k
                           ├──▶ failing: no gate opens; running targets finish ──▶ failed
                           │ cancel()
                           └──▶ cancelling: CancelTarget to running targets;
                                once every running target reported ──────────▶ cancelled

The first cause wins: a failure before cancel() ends ``failed``; a failed report
after cancel() is the cancellation taking effect and ends ``cancelled``.

Target states, all targets being in the same (current) gate:

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
    task ends cancelled            not failed       cancelled           -

A report that matches no open gate of a running target (a duplicate, a stale gate,
an unknown machine) is ignored and returns ``[]``, so retried messages are harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from tentacle.protocol.documents import DocumentError, key_path
from tentacle.protocol.json_fields import FieldReader
from tentacle.protocol.plan import Plan

GateOutcome = Literal["success", "failed", "unknown"]
TaskState = Literal["pending", "running", "success", "failed", "cancelled"]
TargetStatus = Literal["waiting", "running", "success", "failed", "cancelled", "unknown"]

PRE_ACQUISITION: Final = "preAcquisition"
ACQUISITION: Final = "acquisition"
OUTCOMES: Final = ("success", "failed", "unknown")
TASK_STATES: Final = ("pending", "running", "success", "failed", "cancelled")
TARGET_STATES: Final = ("waiting", "running", "success", "failed", "cancelled", "unknown")
SNAPSHOT_VERSION: Final = 1
MAX_REASON: Final = 1000  # keeps errors and snapshots bounded whatever a target reports
_FINISHED: Final = ("success", "failed", "cancelled")
_SNAPSHOT_FIELDS: Final = (
    "version",
    "taskId",
    "gates",
    "gateLabels",
    "state",
    "current",
    "error",
    "failure",
    "cancelReason",
    "targets",
)


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
class TargetState:
    """What one target is doing, as the task view shows it."""

    machine_name: str
    phase: str
    state: TargetStatus


@dataclass
class _Target:
    """A target's mutable record: the gates it has work in and its state in the current one."""

    work: frozenset[int]
    state: TargetStatus = "waiting"


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
    ) -> None:
        """Set every field to a task that has not started."""
        self.task_id = task_id
        self.gates = gates
        self._labels = labels
        self._targets = targets
        self._current = 0
        self._state: TaskState = "pending"
        self._error: str | None = None
        self._failure: str | None = None
        self._cancel_reason: str | None = None

    @property
    def state(self) -> TaskState:
        """``pending``, ``running``, ``success``, ``failed`` or ``cancelled``."""
        return self._state

    @property
    def error(self) -> str | None:
        """Why the task failed or was cancelled; None otherwise."""
        return self._error

    @property
    def current_gate(self) -> int:
        """The index of the gate the targets are in."""
        return self._current

    # --- events -------------------------------------------------------------------

    def start(self) -> list[Action]:
        """Open the first gate that any target has work in."""
        if self._state != "pending":
            return []
        self._state = "running"
        return self._open(0)

    def target_finished(
        self, machine: str, gate_index: int, outcome: GateOutcome, reason: str = ""
    ) -> list[Action]:
        """``machine`` finished its part of gate ``gate_index``."""
        if outcome not in OUTCOMES:
            raise GateError([("outcome", "must be one of: " + ", ".join(OUTCOMES))])
        target = self._targets.get(machine)
        if self._state != "running" or target is None or target.state != "running":
            return []
        if gate_index != self._current:
            return []
        if outcome == "success":
            target.state = "success"
        elif outcome == "unknown":
            target.state = "unknown"
            self._fail(machine, "reported an unknown result", reason)
        else:
            target.state = "failed" if self._cancel_reason is None else "cancelled"
            self._fail(machine, "failed", reason)
        return self._settle()

    def target_lost(self, machine: str, reason: str) -> list[Action]:
        """``machine`` cannot take part any more; it counts as failed in the current gate."""
        target = self._targets.get(machine)
        if self._state in _FINISHED or target is None:
            return []
        if target.state not in ("waiting", "running", "success"):
            return []
        target.state = "failed"
        self._fail(machine, "was lost", reason)
        return self._settle()

    def cancel(self, reason: str) -> list[Action]:
        """Stop the task: cancel running targets; it ends once they have reported."""
        if self._state in _FINISHED or self._cancel_reason is not None:
            return []
        self._cancel_reason = reason or "cancelled"
        running = [name for name, target in self._targets.items() if target.state == "running"]
        return [*(CancelTarget(name) for name in running), *self._settle()]

    def resume(self) -> list[Action]:
        """The actions to repeat after `restore` (tentacles treat repeats as no-ops)."""
        if self._state in _FINISHED:
            return [TaskFinished(self._state, self._error)]
        running = [name for name, target in self._targets.items() if target.state == "running"]
        if self._cancel_reason is not None:
            return [CancelTarget(name) for name in running]
        return [OpenGate(name, self._current, self.gates[self._current]) for name in running]

    def target_states(self) -> list[TargetState]:
        """Each target's phase (gate name, or ``done`` after success) and state."""
        phase = "done" if self._state == "success" else self.gates[self._current]
        return [TargetState(name, phase, target.state) for name, target in self._targets.items()]

    # --- transitions --------------------------------------------------------------

    def _open(self, gate: int) -> list[Action]:
        """Open ``gate``, passing at once every gate no target has work in."""
        for index in range(gate, len(self.gates)):
            self._current = index
            actions: list[Action] = []
            for name, target in self._targets.items():
                target.state = "running" if index in target.work else "success"
                if target.state == "running":
                    actions.append(OpenGate(name, index, self.gates[index]))
            if actions:
                return actions
        return self._finish("success", None)

    def _fail(self, machine: str, what: str, reason: str) -> None:
        """Record the task's first failure, unless a cancellation came first."""
        if self._failure is not None or self._cancel_reason is not None:
            return
        detail = f": {reason[:MAX_REASON]}" if reason else ""
        self._failure = f"{machine} {what} in {self._labels[self._current]}{detail}"

    def _settle(self) -> list[Action]:
        """Once no target is running: end the task or open the next gate."""
        if any(target.state == "running" for target in self._targets.values()):
            return []
        if self._failure is not None:
            return self._finish("failed", self._failure)
        if self._cancel_reason is not None:
            return self._finish("cancelled", f"cancelled: {self._cancel_reason[:MAX_REASON]}")
        if self._state == "pending":
            return []
        return self._open(self._current + 1)

    def _finish(self, state: TaskState, error: str | None) -> list[Action]:
        """End the task once; on cancellation, every target not failed reads cancelled."""
        self._state = state
        self._error = error
        if state == "cancelled":
            for target in self._targets.values():
                if target.state in ("waiting", "running", "success"):
                    target.state = "cancelled"
        return [TaskFinished(state, error)]

    # --- persistence ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able dict from which `restore` rebuilds this coordinator exactly."""
        return {
            "version": SNAPSHOT_VERSION,
            "taskId": self.task_id,
            "gates": list(self.gates),
            "gateLabels": list(self._labels),
            "state": self._state,
            "current": self._current,
            "error": self._error,
            "failure": self._failure,
            "cancelReason": self._cancel_reason,
            "targets": [
                {"machineName": name, "work": sorted(target.work), "state": target.state}
                for name, target in self._targets.items()
            ],
        }

    @classmethod
    def restore(cls, snapshot: object) -> TaskCoordinator:
        """Rebuild a coordinator from `snapshot()`'s dict; raises `GateError` when malformed."""
        reader = FieldReader()
        coordinator = _read_snapshot(reader, snapshot)
        reader.raise_if_any(GateError)
        if coordinator is None:  # pragma: no cover - a None result always records a problem
            raise GateError([("document", "invalid snapshot")])
        return coordinator


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


# --- snapshot decoding ----------------------------------------------------------------


def _read_snapshot(reader: FieldReader, value: object) -> TaskCoordinator | None:
    """A coordinator from a snapshot, or None when it has problems (recorded)."""
    obj = reader.obj(value, "", _SNAPSHOT_FIELDS)
    if obj is None:
        return None
    reader.integer(obj, "version", "", low=SNAPSHOT_VERSION, high=SNAPSHOT_VERSION)
    task_id = reader.text(obj, "taskId", "")
    gates = reader.texts(obj, "gates", "", non_empty=True)
    labels = reader.texts(obj, "gateLabels", "", non_empty=True)
    count = len(gates or ())
    if labels is not None and len(labels) != count:
        reader.problem("gateLabels", "must have one label per gate")
    state = reader.text(obj, "state", "", choices=TASK_STATES)
    current = reader.integer(obj, "current", "", low=0, high=max(count - 1, 0))
    targets = _read_targets(reader, obj, count)
    texts = [_optional_text(reader, obj, key) for key in ("error", "failure", "cancelReason")]
    if reader.problems or task_id is None or gates is None or labels is None or current is None:
        return None
    coordinator = TaskCoordinator.__new__(TaskCoordinator)
    coordinator._setup(task_id, gates, labels, targets)
    coordinator._current = current
    coordinator._state = cast(TaskState, state)
    coordinator._error, coordinator._failure, coordinator._cancel_reason = texts
    return coordinator


def _read_targets(reader: FieldReader, obj: Mapping[str, object], gate_count: int) -> dict[str, _Target]:
    """The targets of a snapshot, by machine name."""
    targets: dict[str, _Target] = {}
    for path, value in reader.items(obj, "targets", "", max_items=100_000, non_empty=True) or []:
        target = reader.obj(value, path, ("machineName", "work", "state"))
        if target is None:
            continue
        name = reader.text(target, "machineName", path)
        state = reader.text(target, "state", path, choices=TARGET_STATES)
        work = _read_work(reader, target, path, gate_count)
        if name is not None and name in targets:
            reader.problem(key_path(path, "machineName"), "duplicate machine name")
        elif name is not None and state is not None and work is not None:
            targets[name] = _Target(work, cast(TargetStatus, state))
    return targets


def _read_work(
    reader: FieldReader, obj: Mapping[str, object], path: str, gate_count: int
) -> frozenset[int] | None:
    """The gate indices a target has work in."""
    items = reader.items(obj, "work", path, max_items=max(gate_count, 1))
    if items is None:
        return None
    work = set()
    for item_path, item in items:
        if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < gate_count:
            reader.problem(item_path, f"must be a gate index from 0 to {gate_count - 1}")
        else:
            work.add(item)
    return frozenset(work)


def _optional_text(reader: FieldReader, obj: Mapping[str, object], key: str) -> str | None:
    """A string field that may be null or absent."""
    if obj.get(key) is None:
        return None
    return reader.text(obj, key, "", max_chars=4 * MAX_REASON)
