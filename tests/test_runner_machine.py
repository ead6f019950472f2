"""The tentacle runner's rules as a pure machine: no sleeps, processes, files or event loops."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle.protocol.plan import Plan, PlannedPackage, PlannedStep
from tentacle.protocol.process import Script
from tentacle.protocol.runner_machine import (
    NOTHING_TO_DO,
    RESUMED,
    Action,
    Emit,
    Forget,
    Gate,
    GateRefused,
    Loaded,
    Note,
    RemoveWork,
    RunGate,
    RunnerMachine,
    Save,
    Stop,
    StopGate,
    TaskEnded,
    TaskEntry,
    UnknownTask,
    check_gate_name,
    step_index,
    work_gates,
)
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


# --- the slot and the queue ---------------------------------------------------------------


def test_the_first_task_takes_the_free_slot_and_the_second_stays_queued() -> None:
    """A second task waits queued with its gate pending (not run) until the first is done."""
    m = RunnerMachine()
    first = m.start("A", ONE_STEP)
    assert of(first, Save) == [Save("A")]
    assert Note("task.running", "A") in first
    assert state(m, "A") == "running"

    second = m.start("B", ONE_STEP)
    assert (state(m, "B"), runs(second)) == ("queued", [])
    assert runs(m.gate("B", 2, "step:1")) == []
    assert gate(m, "B", 2) == ("pending", "")
    assert entry_of(m, "B").shown_gates() == []

    assert runs(m.gate("A", 2, "step:1")) == [("A", 2)]
    after = m.gate_done("A", 2, GateState.SUCCESS, "exit code 0")
    assert TaskEnded("A", TaskState.SUCCESS) in after
    assert runs(after) == [("B", 2)]
    assert (state(m, "A"), state(m, "B"), m.holder) == ("success", "running", m.task("B"))


def test_a_task_runs_its_gates_one_at_a_time_in_the_order_they_were_opened() -> None:
    """Gates opened while one runs wait; each runs after the previous one ended."""
    m = running(RunnerMachine(), work=frozenset({"preAcquisition", "step:1", "step:2"}))
    assert runs(m.gate("A", 0, "preAcquisition")) == [("A", 0)]
    assert runs(m.gate("A", 3, "step:2")) == []
    assert runs(m.gate("A", 2, "step:1")) == []
    assert runs(m.gate_done("A", 0, GateState.SUCCESS, "")) == [("A", 3)]
    assert runs(m.gate_done("A", 3, GateState.SUCCESS, "")) == [("A", 2)]
    assert TaskEnded("A", TaskState.SUCCESS) in m.gate_done("A", 2, GateState.SUCCESS, "")


def test_the_task_holds_the_slot_between_gates_and_ends_after_its_last_gate_with_work() -> None:
    """With step:1 done and step:2 not yet opened the task still holds the slot."""
    m = running(RunnerMachine(), work=frozenset({"step:1", "step:2"}))
    m.start("B", ONE_STEP)
    m.gate("A", 2, "step:1")
    assert runs(m.gate_done("A", 2, GateState.SUCCESS, "exit code 0")) == []
    assert (state(m, "A"), state(m, "B")) == ("running", "queued")
    m.gate("A", 3, "step:2")
    m.gate_done("A", 3, GateState.SUCCESS, "exit code 0")
    assert (state(m, "A"), state(m, "B")) == ("success", "running")


def test_a_failed_gate_ends_the_task_and_later_gates_are_not_run() -> None:
    """A failure releases the slot; a gate opened afterwards is failed 'not run'."""
    m = running(RunnerMachine(), work=frozenset({"step:1", "step:2"}))
    m.gate("A", 2, "step:1")
    assert TaskEnded("A", TaskState.FAILED) in m.gate_done("A", 2, GateState.FAILED, "exit code 3")
    assert runs(m.gate("A", 3, "step:2")) == []
    assert gate(m, "A", 3) == ("failed", "not run: the task had already ended")


def test_gates_without_work_pass_at_once_and_a_task_without_work_ends_on_taking_the_slot() -> None:
    """A gate this target has no work in succeeds unrun; a plan with no work is done at once."""
    m = running(RunnerMachine())
    assert runs(m.gate("A", 0, "preAcquisition")) == []
    assert gate(m, "A", 0) == ("success", NOTHING_TO_DO)
    m.start("idle", frozenset())
    m.gate("A", 2, "step:1")
    after = m.gate_done("A", 2, GateState.SUCCESS, "")
    assert [TaskEnded("A", TaskState.SUCCESS), TaskEnded("idle", TaskState.SUCCESS)] == of(after, TaskEnded)
    assert m.holder is None


def test_one_save_per_task_per_event_and_it_precedes_the_run() -> None:
    """Several changes of one task in one event are saved once, before its gate runs."""
    m = running(RunnerMachine())
    actions = m.gate("A", 2, "step:1")
    assert of(actions, Save) == [Save("A")]
    assert actions.index(Save("A")) < actions.index(RunGate("A", 2, "step:1"))
    assert gate(m, "A", 2) == ("running", "")


# --- repeats --------------------------------------------------------------------------------


def test_repeats_are_idempotent() -> None:
    """start twice, a gate twice, gate_done of a gate not running: nothing happens again."""
    m = running(RunnerMachine())
    assert m.start("A", ONE_STEP) == []
    assert runs(m.gate("A", 2, "step:1")) == [("A", 2)]
    assert m.gate("A", 2, "step:1") == []
    m.gate_done("A", 2, GateState.SUCCESS, "exit code 0")
    assert m.gate("A", 2, "step:1") == []
    assert m.gate_done("A", 2, GateState.FAILED, "a late duplicate") == []
    assert gate(m, "A", 2) == ("success", "exit code 0")
    assert m.gate_done("nobody", 2, GateState.SUCCESS, "") == []


def test_a_gate_index_or_name_reused_differently_is_refused() -> None:
    """Index 2 cannot become another gate, nor step:1 get a second index."""
    m = running(RunnerMachine())
    m.gate("A", 2, "step:1")
    with pytest.raises(GateRefused, match="gate 2 is 'step:1', not 'step:9'"):
        m.gate("A", 2, "step:9")
    with pytest.raises(GateRefused, match="already opened as gate 2"):
        m.gate("A", 5, "step:1")
    with pytest.raises(UnknownTask):
        m.gate("nobody", 0, "preAcquisition")


def test_gate_done_needs_a_final_state() -> None:
    """A gate cannot be reported as pending or running."""
    m = running(RunnerMachine())
    m.gate("A", 2, "step:1")
    with pytest.raises(ValueError, match="state"):
        m.gate_done("A", 2, GateState.RUNNING, "")


# --- cancel and finish ------------------------------------------------------------------------


def test_cancel_of_a_queued_task_ends_it_and_its_gates_are_not_run() -> None:
    """A queued task is cancelled at once; its pending gate reads cancelled; the holder runs on."""
    m = running(RunnerMachine())
    m.gate("A", 2, "step:1")
    m.start("B", ONE_STEP)
    m.gate("B", 2, "step:1")
    actions = m.cancel("B")
    assert TaskEnded("B", TaskState.CANCELLED) in actions
    assert (runs(actions), of(actions, StopGate)) == ([], [])
    assert gate(m, "B", 2) == ("cancelled", "not run: the task was cancelled")
    assert (state(m, "A"), gate(m, "A", 2)) == ("running", ("running", ""))
    assert m.cancel("B") == []
    assert runs(m.gate_done("A", 2, GateState.SUCCESS, "")) == []


def test_cancel_of_a_running_gate_stops_it_and_the_task_ends_when_it_reports() -> None:
    """The gate is told to stop; the task stays running until the gate reports, then is cancelled."""
    m = running(RunnerMachine())
    m.gate("A", 2, "step:1")
    m.start("B", ONE_STEP)
    assert of(m.cancel("A"), StopGate) == [StopGate("A", "cancelled by the server")]
    assert state(m, "A") == "running"
    assert m.cancel("A") == []
    after = m.gate_done("A", 2, GateState.CANCELLED, "cancelled by the server")
    assert TaskEnded("A", TaskState.CANCELLED) in after
    assert (state(m, "A"), state(m, "B")) == ("cancelled", "running")


def test_finish_during_a_gate_stops_it_ends_the_task_cancelled_and_lets_the_work_folder_go() -> None:
    """finish stops the running gate; once it reports, the task is cancelled and its work folder goes."""
    m = running(RunnerMachine())
    m.gate("A", 2, "step:1")
    assert of(m.finish("A"), StopGate) == [StopGate("A", "the server finished the task")]
    after = m.gate_done("A", 2, GateState.CANCELLED, "the server finished the task")
    assert [TaskEnded("A", TaskState.CANCELLED), RemoveWork("A")] == [
        *of(after, TaskEnded),
        *of(after, RemoveWork),
    ]


def test_finish_after_the_end_lets_the_work_folder_go_once() -> None:
    """A finished task keeps its state; the first finish removes the work, a repeat does nothing."""
    m = running(RunnerMachine())
    m.gate("A", 2, "step:1")
    m.gate_done("A", 2, GateState.SUCCESS, "")
    assert of(m.finish("A"), RemoveWork) == [RemoveWork("A")]
    assert state(m, "A") == "success"
    assert m.finish("A") == []
    assert m.cancel("A") == []


def test_finish_of_a_queued_task_ends_it_cancelled_and_a_late_gate_is_not_run() -> None:
    """finish of a task that never ran: cancelled, its gates cancelled 'not run'."""
    m = running(RunnerMachine())
    m.start("B", ONE_STEP)
    m.gate("B", 2, "step:1")
    m.finish("B")
    assert state(m, "B") == "cancelled"
    assert gate(m, "B", 2) == ("cancelled", "not run: the server finished the task")
    m.gate("B", 0, "preAcquisition")
    assert gate(m, "B", 0) == ("success", NOTHING_TO_DO)
    with pytest.raises(UnknownTask):
        m.cancel("nobody")


def test_a_gate_of_a_cancelled_task_is_cancelled_even_without_work() -> None:
    """Once cancelled, every new gate reads cancelled 'not run'."""
    m = running(RunnerMachine())
    m.cancel("A")
    m.gate("A", 0, "preAcquisition")
    assert gate(m, "A", 0) == ("cancelled", "not run: the task was cancelled")


# --- restarts ----------------------------------------------------------------------------------


def test_a_gate_running_at_a_crash_is_unknown_after_restart_and_never_run_again() -> None:
    """The interrupted step's gate reads unknown (naming the step), the task failed, the slot is free."""
    m = RunnerMachine()
    entry = on_disk("A", 0, "running", [(2, "step:1", "running")])
    queued = on_disk("B", 1, "queued", [(2, "step:1", "pending")])
    actions = m.loaded([Loaded(entry, "Deploy web"), Loaded(queued)])
    reason = "tentacle restarted while step 'Deploy web' was running; its result is unknown"
    assert gate(m, "A", 2) == ("unknown", reason)
    assert Emit("A", "Deploy web", reason) in actions
    assert TaskEnded("A", TaskState.FAILED) in actions
    assert runs(actions) == [("B", 2)]
    assert m.gate("A", 2, "step:1") == []
    assert gate(m, "A", 2) == ("unknown", reason)


def test_an_interrupted_gate_without_a_known_step_names_the_gate() -> None:
    """A crash between steps names the gate; a cancel asked before the crash ends it cancelled."""
    m = RunnerMachine()
    entry = on_disk("A", 0, "running", [(0, "preAcquisition", "running")], stop="cancel")
    m.loaded([Loaded(entry)])
    reason = "tentacle restarted while gate 'preAcquisition' was running; its result is unknown"
    assert (state(m, "A"), gate(m, "A", 0)) == ("cancelled", ("unknown", reason))


def test_acquisition_running_at_a_crash_resumes_after_restart() -> None:
    """An interrupted acquisition is acquired again (partial downloads resume), not unknown."""
    m = RunnerMachine()
    entry = on_disk("A", 0, "running", [(1, "acquisition", "running")], work=frozenset({"acquisition"}))
    actions = m.loaded([Loaded(entry)])
    assert Emit("A", "", RESUMED) in actions
    assert runs(actions) == [("A", 1)]
    assert (state(m, "A"), gate(m, "A", 1)) == ("running", ("running", ""))
    assert TaskEnded("A", TaskState.SUCCESS) in m.gate_done(
        "A", 1, GateState.SUCCESS, "1 package(s) acquired"
    )


def test_acquisition_is_not_resumed_when_a_stop_was_asked() -> None:
    """A cancel recorded before the crash makes the interrupted acquisition unknown."""
    m = RunnerMachine()
    gates = [(1, "acquisition", "running")]
    m.loaded([Loaded(on_disk("A", 0, "running", gates, stop="cancel"))])
    assert (state(m, "A"), gate(m, "A", 1)[0]) == ("cancelled", "unknown")


def test_arrival_order_is_kept_across_restarts() -> None:
    """Queued tasks take the slot by arrival, whatever order the disk lists them in; new ones come after."""
    m = RunnerMachine()
    found = [Loaded(on_disk(name, arrival, "queued")) for name, arrival in (("C", 9), ("A", 2), ("B", 5))]
    m.loaded(found)
    assert [e.task_id for e in m.tasks()] == ["A", "B", "C"]
    assert state(m, "A") == "running"
    m.start("D", ONE_STEP)
    assert entry_of(m, "D").arrival == 10
    order = []
    for _ in range(4):
        holder = m.holder
        assert holder is not None
        order.append(holder.task_id)
        m.gate(holder.task_id, 2, "step:1")
        m.gate_done(holder.task_id, 2, GateState.SUCCESS, "")
    assert order == ["A", "B", "C", "D"]


def test_only_the_earliest_running_task_keeps_the_slot_after_restart() -> None:
    """A hand-edited state with two holders: the later one goes back to the queue."""
    m = RunnerMachine()
    actions = m.loaded([Loaded(on_disk("A", 0, "running")), Loaded(on_disk("B", 1, "running"))])
    assert (state(m, "A"), state(m, "B")) == ("running", "queued")
    assert Save("B") in actions


def test_a_task_whose_work_all_passed_ends_after_restart() -> None:
    """A holder with every gate passed but not ended (a crash between saves) ends in success."""
    m = RunnerMachine()
    actions = m.loaded([Loaded(on_disk("A", 0, "running", [(2, "step:1", "success")]))])
    assert TaskEnded("A", TaskState.SUCCESS) in actions


# --- shutdown, discard, pruning ------------------------------------------------------------------


def test_shutdown_starts_nothing_new_but_a_gate_still_ends_its_task() -> None:
    """After shutdown no gate and no task starts; a gate that reports still ends its task."""
    m = running(RunnerMachine())
    m.gate("A", 2, "step:1")
    m.start("B", ONE_STEP)
    m.gate("B", 2, "step:1")
    assert m.shutdown() == []
    after = m.gate_done("A", 2, GateState.CANCELLED, "tentacle stopped")
    assert TaskEnded("A", TaskState.CANCELLED) in after
    assert (runs(after), state(m, "B")) == ([], "queued")


def test_a_task_that_could_not_be_recorded_is_discarded_and_frees_the_slot() -> None:
    """discard forgets a new task; the slot goes to the next queued one."""
    m = RunnerMachine()
    m.loaded([Loaded(on_disk("B", 4, "queued", [(2, "step:1", "pending")]))])
    m.discard("B")  # B was recorded; pretend it was not, to free the slot for the test
    m.start("A", ONE_STEP)
    m.start("C", ONE_STEP)
    m.gate("C", 2, "step:1")
    assert entry_of(m, "A").arrival == 5
    assert runs(m.discard("A")) == [("C", 2)]
    assert m.task("A") is None
    assert m.discard("A") == []


def test_ended_tasks_beyond_keep_are_forgotten_oldest_first() -> None:
    """With keep=1, the older of two ended tasks is forgotten; running and queued ones never are."""
    m = RunnerMachine(keep=1)
    m.start("A", ONE_STEP)
    m.start("B", ONE_STEP)
    m.start("C", ONE_STEP)
    assert of(m.cancel("B"), Forget) == []
    assert of(m.cancel("A"), Forget) == [Forget("A")]
    assert [e.task_id for e in m.tasks()] == ["B", "C"]
    assert state(m, "C") == "running"


# --- plan helpers ------------------------------------------------------------------------------


def test_work_gates_and_gate_names_follow_the_plan() -> None:
    """The gates a plan has work in; names that are not gates, or steps of another phase, are refused."""
    package = PlannedPackage(id="Web", version="1.0.0", sha512="a" * 128, size=1, file_name="Web.1.0.0.zip")
    steps = (
        PlannedStep(index=0, name="VPN", script=Script("bash", "true"), phase="preAcquisition"),
        PlannedStep(index=2, name="Deploy", package=package),
    )
    plan = Plan(
        task_id="T",
        kind="deployment",
        project_name="Shop",
        release_version="1.0",
        environment_name="Production",
        machine_name="web-01",
        steps=steps,
        variables=(),
    )
    assert work_gates(plan) == {"preAcquisition", "acquisition", "step:2"}
    assert step_index("step:12") == 12
    check_gate_name(plan, "acquisition")
    check_gate_name(plan, "step:7")  # a step this target does not have: nothing to do
    with pytest.raises(GateRefused, match="runs in the preAcquisition gate"):
        check_gate_name(plan, "step:0")
    for bad in ("deploy", "step:", "step:01", "step:-1"):
        with pytest.raises(GateRefused, match="gateName"):
            check_gate_name(plan, bad)


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
