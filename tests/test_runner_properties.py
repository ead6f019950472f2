"""The tentacle runner's rules hold under any sequence of events (a hypothesis property test of
the pure machine)."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle.protocol.runner_machine import (
    RESUMED,
    Action,
    Emit,
    Forget,
    Loaded,
    Note,
    RemoveWork,
    RunGate,
    RunnerMachine,
    Save,
    StopGate,
    TaskEntry,
)
from tentacle.protocol.states import GateState, TaskState
from tests.runner_machine_helpers import GATE_INDEX

# --- property: the rules hold under any sequence of events --------------------------------------

TASKS = ("A", "B", "C")
GATE_NAMES = tuple(GATE_INDEX)
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["start", "start", "gate", "gate", "done", "done", "cancel", "finish", "restart"]),
        st.sampled_from(TASKS),
        st.sampled_from(GATE_NAMES),
        st.sampled_from([GateState.SUCCESS, GateState.SUCCESS, GateState.FAILED, GateState.CANCELLED]),
    ),
    min_size=15,  # hypothesis keeps lists short otherwise (about 5): too few to fill the queue
    max_size=80,
)
WORK = st.fixed_dictionaries({t: st.frozensets(st.sampled_from(GATE_NAMES)) for t in TASKS})


class World:
    """A machine driven by events, with its restarts, and everything it asked to run.

    A task id started again after the machine forgot it is a new task: it gets a new
    ticket (its place in the order the tasks came) and its gates count afresh.
    """

    def __init__(self, work: dict[str, frozenset[str]], keep: int) -> None:
        self.work, self.keep = work, keep
        self.machine = RunnerMachine(keep)
        self.tickets: dict[str, int] = {}  # the current task of each id, by the order it came
        self.next_ticket = 0
        self.runs: dict[tuple[int, int], int] = {}  # (ticket, gate index) -> RunGates
        self.resumes: dict[tuple[int, int], int] = {}
        self.slot_order: list[int] = []  # the tickets of the tasks that took the slot

    def apply(self, actions: list[Action]) -> None:
        """Record what the machine asked for; each action names a task held (or forgotten after)."""
        forgotten = {a.task_id for a in actions if isinstance(a, Forget)}
        gone: set[str] = set()
        for action in actions:
            assert action.task_id not in gone, "nothing follows a task's Forget"
            ticket = self.tickets[action.task_id]
            if isinstance(action, Forget):
                gone.add(action.task_id)
            if isinstance(action, RunGate):
                self.runs[ticket, action.index] = self.runs.get((ticket, action.index), 0) + 1
            if isinstance(action, Emit) and action.text == RESUMED:
                key = (ticket, GATE_INDEX["acquisition"])
                self.resumes[key] = self.resumes.get(key, 0) + 1
            if isinstance(action, Note) and action.name == "task.running":
                self.slot_order.append(ticket)
            if isinstance(action, Save | RunGate | StopGate | RemoveWork):
                assert self.machine.task(action.task_id) is not None or action.task_id in forgotten

    def step(self, kind: str, task: str, name: str, outcome: GateState) -> None:
        """One event (skipped when it names a task the machine does not hold)."""
        m = self.machine
        if kind == "start":
            if m.task(task) is None:
                self.tickets[task] = self.next_ticket
                self.next_ticket += 1
            self.apply(m.start(task, self.work[task]))
        elif kind == "restart":
            self.restart()
        elif m.task(task) is None:
            return
        elif kind == "gate":
            self.apply(m.gate(task, GATE_INDEX[name], name))
        elif kind == "done":
            self.finish_running(outcome)
        else:
            self.apply(m.cancel(task) if kind == "cancel" else m.finish(task))

    def finish_running(self, outcome: GateState) -> None:
        """The running gate (if any) reports ``outcome``."""
        holder = self.machine.holder
        gate = None if holder is None else holder.running_gate
        if holder is not None and gate is not None:
            self.apply(self.machine.gate_done(holder.task_id, gate.index, outcome, ""))

    def restart(self) -> None:
        """The process dies and a new one loads what was saved."""
        found = [Loaded(copy.deepcopy(entry), "Step") for entry in self.machine.tasks()]
        self.machine = RunnerMachine(self.keep)
        self.apply(self.machine.loaded(found))

    def check(self) -> None:
        """The invariants that hold after every event."""
        entries = self.machine.tasks()
        holders = [e for e in entries if e.state == "running"]
        assert len(holders) <= 1, "at most one task holds the slot"
        busy = [(e.task_id, g.index) for e in entries for g in e.gates.values() if g.state == "running"]
        assert all(task == holders[0].task_id for task, _ in busy) and len(busy) <= 1
        for key, count in self.runs.items():
            assert count <= 1 + self.resumes.get(key, 0), f"gate {key} ran twice"
        assert self.slot_order == sorted(self.slot_order), "the slot goes by arrival"
        for entry in entries:
            states = {g.state for g in entry.gates.values()}
            if entry.ended:
                assert not states & {"pending", "running"}, "an ended task runs nothing more"
                assert entry.state == ended_as(entry), "an ended task's state follows its gates"
            else:
                assert states <= {"pending", "running", "success"}, "a gate that did not pass ends it"


def ended_as(entry: TaskEntry) -> TaskState:
    """How a task ended, by the rule: cancelled when asked; failed, success, else cancelled by its gates."""
    if entry.stop == "cancel":
        return TaskState.CANCELLED
    if any(gate.state in ("failed", "unknown") for gate in entry.gates.values()):
        return TaskState.FAILED
    passed = {gate.name for gate in entry.gates.values() if gate.state == "success"}
    return TaskState.SUCCESS if entry.work <= passed else TaskState.CANCELLED


@settings(max_examples=300, deadline=None)
@given(WORK, st.integers(0, 3), EVENTS)
def test_runner_rules_hold_for_any_event_sequence(
    work: dict[str, frozenset[str]], keep: int, events: list[tuple[str, str, str, GateState]]
) -> None:
    """One slot, gates never run twice (but a resumed acquisition), slot by arrival; every task ends
    in the state its gates say."""
    world = World(work, keep)
    for event in events:
        world.step(*event)
        world.check()
    for task in TASKS:  # the server finishes every task it started; running gates report
        if world.machine.task(task) is not None:
            world.apply(world.machine.finish(task))
        world.finish_running(GateState.CANCELLED)
        world.check()
    assert all(entry.ended for entry in world.machine.tasks()), "every task ends"
    assert world.machine.holder is None
