"""The tentacle's task runner rules as a pure state machine: events in, actions out.

Like the server's `tentacle.protocol.coordinator`, it never runs, waits or writes: the
runner (`tentacle.runner.runner`) feeds it the server's requests and its own results as
events, and carries out the actions it returns, in order. It holds the slot (one task
runs at a time), the queue, and every task's gates.

Events: `loaded` (once, after a restart, with what was on disk), `start`, `gate`,
`cancel`, `finish` (the server's requests), `gate_done` (a gate's work ended),
`discard` (a new task could not be recorded), `shutdown` (start nothing new).

Actions: `Save` (the task's record changed), `RunGate` (do the gate's work, once its
running state is saved, then report `gate_done`), `StopGate` (stop the running gate's
work), `Emit` (a system line in the task's log), `TaskEnded`, `RemoveWork` (the ended
task's work folder may go), `Forget` (an old ended task leaves memory and disk), `Note`
(something worth a log event). Every change of a task yields one `Save` per event.

Task states (`tentacle.protocol.states.TaskState`, the server's vocabulary too)::

    start() ──▶ queued ──the slot is free (earliest first)──▶ running ──▶ success | failed | cancelled

    event                                            from            to        actions
    start()                                          -               queued    Save
    the slot is free                                 queued          running   Save
    cancel()/finish() while a gate runs              running         running   StopGate, Save
    cancel()/finish() with no gate running;          queued/running  ended     TaskEnded, Save
      gate_done() after either, or of a gate that                              (RemoveWork once
      did not succeed, or of the task's last work;                             finished)
      loaded() with a gate running (not a resumable
      acquisition)

An ended task is (`ended_state`) ``cancelled`` when the server cancelled it; else
``failed`` when a gate failed or its result is unknown; else ``success`` when every gate
it has work in succeeded; else ``cancelled`` (finished by the server, or stopped by a
shutdown, first). An older tentacle's task.json saying ``done`` reads the same way.

The slot goes to the earliest queued task (arrival order, kept across restarts); a
second task stays queued, its gates remembered as ``pending``. After `shutdown` no task
takes the slot and no gate starts. Ended tasks beyond the newest ``keep`` are forgotten
(`Forget`), oldest first.

Gate states (a task's gates run one at a time, in the order they were opened)::

    event                          from      to                             action
    gate(), the task has no work   -         success "nothing to do ..."    Save
    gate(), the task ended         -         cancelled/failed "not run ..." Save
    gate(), otherwise              -         pending                        Save
    its task holds the slot and    pending   running                        Save, RunGate
      runs no other gate
    gate_done(outcome)             running   outcome                        Save (the task
                                                                            may end)
    the task ends                  pending   cancelled/failed "not run ..." -
    loaded(), acquisition only,    running   pending (resumed: partial      Emit, Save
      no stop asked                          downloads resume)
    loaded(), any other gate       running   unknown (never run again;      Emit, Save,
                                             the task ends)                 TaskEnded

Repeats are harmless: start() of a known task, gate() with a known index and name,
a second cancel() or finish(), and gate_done() of a gate that is not running all
return ``[]``. A gate index reused with another name, or a name opened
under a second index, is refused (`GateRefused`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from tentacle.protocol.plan import Plan
from tentacle.protocol.states import ACQUISITION, PRE_ACQUISITION, GateState, TaskState

Stop = Literal["cancel", "finish"]

GATE_RESULTS: Final = (GateState.SUCCESS, GateState.FAILED, GateState.UNKNOWN, GateState.CANCELLED)
STOPS: Final = ("cancel", "finish")
KEEP_ENDED: Final = 100
NOTHING_TO_DO: Final = "nothing to do on this target"
RESUMED: Final = "tentacle restarted during acquisition: acquiring again (partial downloads resume)"
STOP_REASONS: Final[Mapping[Stop, str]] = {
    "cancel": "cancelled by the server",
    "finish": "the server finished the task",
}
_STEP_GATE = re.compile(r"^step:(0|[1-9][0-9]{0,5})$")


class GateRefused(ValueError):
    """A gate request that contradicts what the task already has, or names no gate."""


class UnknownTask(LookupError):
    """The event names a task the machine does not hold."""


@dataclass
class Gate:
    """One gate the server opened: ``pending`` until it runs (not shown to the server)."""

    index: int
    name: str
    state: GateState = GateState.PENDING
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        """The disk form (task.json)."""
        return {"index": self.index, "name": self.name, "state": self.state.value, "reason": self.reason}


@dataclass(eq=False)
class TaskEntry:
    """One task as the machine holds it; the runner reads it (and saves it), never writes it."""

    task_id: str
    arrival: int
    work: frozenset[str]  # the gates this target has work in
    state: TaskState = TaskState.QUEUED
    gates: dict[int, Gate] = field(default_factory=dict)  # in the order they were opened
    stop: Stop | None = None
    finished: bool = False

    @property
    def ended(self) -> bool:
        """Whether the task released the slot for good (success, failed or cancelled)."""
        return self.state.final

    @property
    def running_gate(self) -> Gate | None:
        """The gate whose work is under way, if any."""
        return next((gate for gate in self.gates.values() if gate.state is GateState.RUNNING), None)

    def shown_gates(self) -> list[Gate]:
        """The gates the server sees (pending ones are not shown), by index."""
        shown = (gate for gate in self.gates.values() if gate.state is not GateState.PENDING)
        return sorted(shown, key=lambda gate: gate.index)


@dataclass(frozen=True)
class Loaded:
    """A task found on disk after a restart, and the step that was running then (if any)."""

    entry: TaskEntry
    running_step: str | None = None


@dataclass(frozen=True)
class Save:
    """The task's record changed: save it (and wake whoever waits for news of it)."""

    task_id: str


@dataclass(frozen=True)
class RunGate:
    """The gate now reads running: once that is saved, do its work and report `gate_done`."""

    task_id: str
    index: int
    name: str


@dataclass(frozen=True)
class StopGate:
    """Stop the running gate's work (a script gets SIGTERM); it reports `gate_done`."""

    task_id: str
    reason: str


@dataclass(frozen=True)
class Emit:
    """A line the runner itself writes in the task's log (masked like script output)."""

    task_id: str
    step: str
    text: str


@dataclass(frozen=True)
class TaskEnded:
    """The task released the slot for good; what it held (packages) may go."""

    task_id: str
    state: TaskState


@dataclass(frozen=True)
class RemoveWork:
    """The task ended and the server finished it: its work folder may go."""

    task_id: str


@dataclass(frozen=True)
class Forget:
    """An ended task beyond the newest `keep`: drop it from memory and from disk."""

    task_id: str


@dataclass(frozen=True)
class Note:
    """Something worth a log event (``name`` is the event, ``detail`` its context)."""

    name: str
    task_id: str
    detail: tuple[tuple[str, str], ...] = ()
    warning: bool = False


Action = Save | RunGate | StopGate | Emit | TaskEnded | RemoveWork | Forget | Note


class _Out:
    """The actions of one event, with at most one `Save` per task (the last change's place)."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    def add(self, action: Action) -> None:
        self.actions.append(action)

    def save(self, entry: TaskEntry) -> None:
        save = Save(entry.task_id)
        if save in self.actions:
            self.actions.remove(save)
        self.actions.append(save)


class RunnerMachine:
    """The slot, the queue and every task's gates; see the module docstring for the rules."""

    def __init__(self, keep: int = KEEP_ENDED) -> None:
        """An empty machine that keeps the newest ``keep`` ended tasks."""
        self._keep = keep
        self._tasks: dict[str, TaskEntry] = {}  # in arrival order
        self._next_arrival = 0
        self._stopping = False

    # --- queries ------------------------------------------------------------------------

    def task(self, task_id: str) -> TaskEntry | None:
        """The task with this id, or None."""
        return self._tasks.get(task_id)

    def tasks(self) -> list[TaskEntry]:
        """Every task held, in arrival order."""
        return list(self._tasks.values())

    @property
    def holder(self) -> TaskEntry | None:
        """The task holding the slot, if any."""
        return next((entry for entry in self._tasks.values() if entry.state is TaskState.RUNNING), None)

    @property
    def stopping(self) -> bool:
        """Whether `shutdown` was called: nothing new starts."""
        return self._stopping

    # --- events ---------------------------------------------------------------------------

    def loaded(self, found: Iterable[Loaded]) -> list[Action]:
        """The tasks on disk after a restart: settle interrupted gates, then run what may run."""
        out = _Out()
        for item in sorted(found, key=lambda item: item.entry.arrival):
            entry = item.entry
            self._tasks[entry.task_id] = entry
            self._next_arrival = max(self._next_arrival, entry.arrival + 1)
            running = [gate for gate in entry.gates.values() if gate.state is GateState.RUNNING]
            if len(running) == 1 and running[0].name == ACQUISITION and entry.stop is None:
                running[0].state = GateState.PENDING
                out.add(Emit(entry.task_id, "", RESUMED))
                out.add(Note("task.acquisition_resumed", entry.task_id, warning=True))
                out.save(entry)
            elif running:
                _interrupted(entry, running, item.running_step, out)
        for entry in [entry for entry in self._tasks.values() if entry.state is TaskState.RUNNING][1:]:
            entry.state = TaskState.QUEUED  # only the earliest holds the slot (a hand edit may say more)
            out.save(entry)
        return self._settle(out)

    def start(self, task_id: str, work: frozenset[str]) -> list[Action]:
        """task.start: a new task joins the queue (a repeat changes nothing)."""
        if task_id in self._tasks:
            return []
        out = _Out()
        entry = TaskEntry(task_id, self._next_arrival, work)
        self._next_arrival += 1
        self._tasks[task_id] = entry
        out.add(Note("task.accepted", task_id))
        out.save(entry)
        return self._settle(out)

    def gate(self, task_id: str, index: int, name: str) -> list[Action]:
        """task.gate: remember a gate once; it runs when its task may run it."""
        entry = self._get(task_id)
        known = entry.gates.get(index)
        if known is not None:
            if known.name != name:
                raise GateRefused(f"gate {index} is {known.name!r}, not {name!r}")
            return []
        other = next((gate for gate in entry.gates.values() if gate.name == name), None)
        if other is not None:
            raise GateRefused(f"gate {name!r} was already opened as gate {other.index}")
        gate = Gate(index, name)
        if entry.ended and (entry.stop == "cancel" or name in entry.work):
            gate.state, gate.reason = _not_run(entry)
        elif name not in entry.work:
            gate.state, gate.reason = GateState.SUCCESS, NOTHING_TO_DO
        entry.gates[index] = gate
        out = _Out()
        out.add(Note("gate.accepted", task_id, (("gate", name), ("state", gate.state))))
        out.save(entry)
        return self._settle(out)

    def cancel(self, task_id: str) -> list[Action]:
        """task.cancel: stop the task; a running gate is stopped first."""
        return self._stop(task_id, "cancel")

    def finish(self, task_id: str) -> list[Action]:
        """task.finish: the task is over everywhere; release the slot, let the work folder go."""
        return self._stop(task_id, "finish")

    def gate_done(self, task_id: str, index: int, state: GateState, reason: str) -> list[Action]:
        """A gate's work ended with ``state``; the task may end and the next thing start."""
        if state not in GATE_RESULTS:
            raise ValueError(f"state: must be one of {', '.join(GATE_RESULTS)}")
        entry = self._tasks.get(task_id)
        gate = None if entry is None else entry.gates.get(index)
        if entry is None or gate is None or gate.state is not GateState.RUNNING:
            return []
        gate.state, gate.reason = GateState(state), reason
        out = _Out()
        if entry.stop is not None or gate.state is not GateState.SUCCESS or _complete(entry):
            _end(entry, out)
        out.save(entry)
        if entry.ended and entry.finished:
            out.add(RemoveWork(task_id))
        return self._settle(out)

    def discard(self, task_id: str) -> list[Action]:
        """A new task could not be recorded: forget it as if it never came."""
        if self._tasks.pop(task_id, None) is None:
            return []
        return self._settle(_Out())

    def shutdown(self) -> list[Action]:
        """Start no task and no gate from now on (running work is the runner's to stop)."""
        self._stopping = True
        return []

    # --- transitions ------------------------------------------------------------------------

    def _get(self, task_id: str) -> TaskEntry:
        entry = self._tasks.get(task_id)
        if entry is None:
            raise UnknownTask(task_id)
        return entry

    def _stop(self, task_id: str, kind: Stop) -> list[Action]:
        """Cancel or finish a task; repeats change nothing."""
        entry = self._get(task_id)
        out = _Out()
        changed = kind == "finish" and not entry.finished
        entry.finished = entry.finished or kind == "finish"
        if not entry.ended and entry.stop is None:
            changed = True
            entry.stop = kind
            out.add(Note(f"task.{kind}", task_id))
            if entry.running_gate is not None:
                out.add(StopGate(task_id, STOP_REASONS[kind]))  # the gate ends the task
            else:
                _end(entry, out)
        if not changed:
            return []
        out.save(entry)
        if entry.ended and entry.finished:
            out.add(RemoveWork(task_id))
        return self._settle(out)

    def _settle(self, out: _Out) -> list[Action]:
        """After every event: drop old ended tasks, then run what may run."""
        ended = [entry for entry in self._tasks.values() if entry.ended]
        for entry in ended[: max(len(ended) - self._keep, 0)]:
            del self._tasks[entry.task_id]
            out.add(Forget(entry.task_id))
        if not self._stopping:
            self._schedule(out)
        return out.actions

    def _schedule(self, out: _Out) -> None:
        """Give a free slot to the earliest queued task and start its next pending gate."""
        holder = self.holder
        while holder is None or (holder.running_gate is None and _complete(holder)):
            if holder is not None:  # all its work is done (or it has none)
                _end(holder, out)
            holder = next((entry for entry in self._tasks.values() if entry.state is TaskState.QUEUED), None)
            if holder is None:
                return
            holder.state = TaskState.RUNNING
            out.add(Note("task.running", holder.task_id))
            out.save(holder)
        if holder.running_gate is not None:
            return
        gate = next((gate for gate in holder.gates.values() if gate.state is GateState.PENDING), None)
        if gate is not None:
            gate.state = GateState.RUNNING
            out.save(holder)
            out.add(RunGate(holder.task_id, gate.index, gate.name))


# --- transitions that need no machine ---------------------------------------------------


def _interrupted(entry: TaskEntry, running: list[Gate], step: str | None, out: _Out) -> None:
    """The process died during these gates: their results are unknown; the task is over."""
    for gate in running:
        what = f"step '{step}'" if step is not None else f"gate '{gate.name}'"
        gate.state = GateState.UNKNOWN
        gate.reason = f"tentacle restarted while {what} was running; its result is unknown"
        out.add(Emit(entry.task_id, step or "", gate.reason))
        out.add(Note("task.interrupted", entry.task_id, (("gate", gate.name),), warning=True))
    if not entry.ended:
        _end(entry, out)
    out.save(entry)


def _end(entry: TaskEntry, out: _Out) -> None:
    """Release the slot for good, in the state its gates say; gates that never started will not run."""
    entry.state = ended_state(entry)
    for gate in entry.gates.values():
        if gate.state is GateState.PENDING:
            gate.state, gate.reason = _not_run(entry)
    out.add(TaskEnded(entry.task_id, entry.state))
    out.save(entry)


# --- pure helpers ----------------------------------------------------------------------------


def work_gates(plan: Plan) -> frozenset[str]:
    """The gates this plan has work in."""
    gates = {f"step:{step.index}" for step in plan.deployment_steps()}
    if plan.pre_acquisition_steps():
        gates.add(PRE_ACQUISITION)
    if plan.packages():
        gates.add(ACQUISITION)
    return frozenset(gates)


def check_gate_name(plan: Plan, name: str) -> None:
    """Refuse a gate name that names no gate of this plan's kind (`GateRefused`)."""
    if name in (PRE_ACQUISITION, ACQUISITION):
        return
    step = plan.step(step_index(name))
    if step is not None and step.phase != "deployment":
        raise GateRefused(f"gateName: step {step.index} runs in the {step.phase} gate")


def step_index(name: str) -> int:
    """The index in a ``step:<index>`` gate name (`GateRefused` for any other name)."""
    match = _STEP_GATE.match(name)
    if match is None:
        raise GateRefused(f"gateName: {name!r} is not preAcquisition, acquisition or step:<index>")
    return int(match.group(1))


def ended_state(entry: TaskEntry) -> TaskState:
    """How a task that ends now ended (see the module docstring), from its stop and its gates."""
    if entry.stop == "cancel":
        return TaskState.CANCELLED
    if any(gate.state in (GateState.FAILED, GateState.UNKNOWN) for gate in entry.gates.values()):
        return TaskState.FAILED
    return TaskState.SUCCESS if _complete(entry) else TaskState.CANCELLED


def _complete(entry: TaskEntry) -> bool:
    """Whether every gate the task has work in succeeded."""
    return entry.work <= {gate.name for gate in entry.gates.values() if gate.state is GateState.SUCCESS}


def _not_run(entry: TaskEntry) -> tuple[GateState, str]:
    """The state of a gate that will never run because its task ended."""
    if entry.stop == "cancel":
        return GateState.CANCELLED, "not run: the task was cancelled"
    if entry.stop == "finish":
        return GateState.CANCELLED, "not run: the server finished the task"
    if entry.state is TaskState.CANCELLED:
        return GateState.CANCELLED, "not run: the task was stopped"
    return GateState.FAILED, "not run: the task had already ended"
