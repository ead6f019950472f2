"""The tentacle runner's rules as a pure machine: no sleeps, processes, files or event loops
(the property test over any sequence of events: tests/test_runner_properties.py)."""

from __future__ import annotations

import pytest

from tentacle.protocol.plan import Plan, PlannedPackage, PlannedStep
from tentacle.protocol.process import Script
from tentacle.protocol.runner_machine import (
    NOTHING_TO_DO,
    RESUMED,
    Emit,
    Forget,
    GateRefused,
    Loaded,
    Note,
    RemoveWork,
    RunGate,
    RunnerMachine,
    Save,
    StopGate,
    TaskEnded,
    UnknownTask,
    check_gate_name,
    step_index,
    work_gates,
)
from tentacle.protocol.states import GateState, TaskState
from tests.runner_machine_helpers import ONE_STEP, entry_of, gate, of, on_disk, running, runs, state

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
