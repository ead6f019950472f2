"""The task coordinator: phases held across targets, failures, cancellation, persistence."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle.errors import TentacleError
from tentacle.protocol.coordinator import (
    CANCEL_NOT_CONFIRMED,
    Action,
    CancelTarget,
    GateError,
    GateOutcome,
    OpenGate,
    TargetProgress,
    TaskCoordinator,
    TaskFinished,
)
from tentacle.protocol.plan import PackageRef, Plan, resolve_plan
from tentacle.protocol.process import parse_process
from tentacle.protocol.states import TargetState, TaskState

PROCESS = parse_process(
    {
        "name": "Shop",
        "steps": [
            {
                "name": "Open VPN",
                "phase": "preAcquisition",
                "roles": ["web"],
                "script": {"syntax": "bash", "body": "vpn-up"},
            },
            {"name": "Deploy web", "roles": ["web"], "package": {"id": "Web"}},
            {"name": "Migrate", "roles": ["db"], "package": {"id": "Db"}},
            {"name": "Warm cache", "roles": ["cache"], "script": {"syntax": "sh", "body": "w"}},
            {
                "name": "Smoke test",
                "roles": ["web", "db", "cache"],
                "script": {"syntax": "sh", "body": "t"},
            },
        ],
    }
)
PACKAGES = {
    "Web": PackageRef("Web", "1.0.0", "a" * 128, 10, "Web.1.0.0.nupkg"),
    "Db": PackageRef("Db", "2.0.0", "b" * 128, 20, "Db.2.0.0.nupkg"),
}
THREE = {"web-1": ["web"], "db-1": ["db"], "cache-1": ["cache"]}
GATES = ("preAcquisition", "acquisition", "step:1", "step:2", "step:3", "step:4")


def plan(machine: str, roles: Sequence[str], task_id: str = "T-1") -> Plan:
    """The example process resolved for one machine."""
    return resolve_plan(
        task_id=task_id,
        kind="deployment",
        steps=PROCESS.steps,
        variables=(),
        project_name="Shop",
        release_version="1.0",
        environment="Production",
        machine_name=machine,
        machine_roles=roles,
        packages=PACKAGES,
        feeds={},
    )


def coordinator(targets: dict[str, list[str]] = THREE) -> TaskCoordinator:
    """A coordinator over ``targets`` (machine name to roles)."""
    return TaskCoordinator("T-1", {name: plan(name, roles) for name, roles in targets.items()})


def opened(actions: list[Action]) -> list[tuple[str, int]]:
    """The (machine, gate index) of every OpenGate in ``actions``."""
    return [(a.machine, a.gate_index) for a in actions if isinstance(a, OpenGate)]


def ok(c: TaskCoordinator, machine: str, gate: int) -> list[Action]:
    """Report that ``machine`` passed ``gate``."""
    return c.target_finished(machine, gate, "success")


def states(c: TaskCoordinator) -> dict[str, tuple[str, str]]:
    """Each target's (phase, state)."""
    return {t.machine_name: (t.phase, t.state) for t in c.target_states()}


def test_happy_path_over_three_targets_with_different_roles() -> None:
    """Each gate opens only for targets with work in it, and the task ends in success."""
    c = coordinator()
    assert c.gates == GATES
    assert (c.state, c.error) == ("queued", None)
    assert c.start() == [OpenGate("web-1", 0, "preAcquisition")]
    assert (c.state, c.error) == ("running", None)
    assert opened(ok(c, "web-1", 0)) == [("web-1", 1), ("db-1", 1)]
    assert ok(c, "web-1", 1) == []
    assert ok(c, "db-1", 1) == [OpenGate("web-1", 2, "step:1")]
    assert ok(c, "web-1", 2) == [OpenGate("db-1", 3, "step:2")]
    assert ok(c, "db-1", 3) == [OpenGate("cache-1", 4, "step:3")]
    assert opened(ok(c, "cache-1", 4)) == [("web-1", 5), ("db-1", 5), ("cache-1", 5)]
    assert ok(c, "web-1", 5) == []
    assert ok(c, "cache-1", 5) == []
    assert ok(c, "db-1", 5) == [TaskFinished(TaskState.SUCCESS, None)]
    assert (c.state, c.error) == ("success", None)
    assert c.target_states() == [
        TargetProgress("web-1", "done", TargetState.SUCCESS),
        TargetProgress("db-1", "done", TargetState.SUCCESS),
        TargetProgress("cache-1", "done", TargetState.SUCCESS),
    ]


def test_slow_target_holds_every_other_target() -> None:
    """No target is sent gate k+1 until the last one has reported gate k."""
    c = coordinator({"web-1": ["web"], "web-2": ["web"], "db-1": ["db"]})
    assert opened(c.start()) == [("web-1", 0), ("web-2", 0)]
    assert ok(c, "web-1", 0) == []
    assert states(c) == {
        "web-1": ("preAcquisition", "success"),
        "web-2": ("preAcquisition", "running"),
        "db-1": ("preAcquisition", "success"),
    }
    assert opened(ok(c, "web-2", 0)) == [("web-1", 1), ("web-2", 1), ("db-1", 1)]
    assert ok(c, "db-1", 1) == []
    assert ok(c, "web-1", 1) == []
    assert opened(ok(c, "web-2", 1)) == [("web-1", 2), ("web-2", 2)]


def test_failure_in_pre_acquisition_opens_no_step_gate() -> None:
    """A preAcquisition failure lets running targets finish, then fails with no step run."""
    c = coordinator({"web-1": ["web"], "web-2": ["web"], "db-1": ["db"]})
    c.start()
    assert c.target_finished("web-1", 0, "failed", "vpn down") == []
    assert c.state == "running"
    finished = ok(c, "web-2", 0)
    assert finished == [TaskFinished(TaskState.FAILED, "web-1 failed in preAcquisition: vpn down")]
    assert (c.state, c.error) == ("failed", "web-1 failed in preAcquisition: vpn down")
    assert states(c)["web-1"] == ("preAcquisition", "failed")
    assert c.start() == []
    assert ok(c, "db-1", 1) == []


def test_failure_in_acquisition_means_no_deployment_step_anywhere() -> None:
    """A failed acquisition on one target stops every target before the first step."""
    c = coordinator()
    c.start()
    ok(c, "web-1", 0)
    assert c.target_finished("db-1", 1, "failed", "hash mismatch") == []
    actions = ok(c, "web-1", 1)
    assert actions == [TaskFinished(TaskState.FAILED, "db-1 failed in acquisition: hash mismatch")]


def test_failure_in_step_stops_later_steps() -> None:
    """A failed step ends the task; no later step gate opens."""
    c = coordinator()
    c.start()
    ok(c, "web-1", 0)
    ok(c, "web-1", 1)
    ok(c, "db-1", 1)
    actions = c.target_finished("web-1", 2, "failed", "exit code 3")
    assert actions == [TaskFinished(TaskState.FAILED, "web-1 failed in step:1 (Deploy web): exit code 3")]
    assert c.target_finished("db-1", 3, "success") == []
    assert c.state == "failed"


def test_unknown_result_fails_the_task() -> None:
    """An interrupted step reported as unknown fails the task and is shown as unknown."""
    c = coordinator({"cache-1": ["cache"]})
    assert c.gates == ("preAcquisition", "acquisition", "step:3", "step:4")
    assert c.start() == [OpenGate("cache-1", 2, "step:3")]
    actions = c.target_finished("cache-1", 2, "unknown", "tentacle restarted")
    assert actions == [
        TaskFinished(
            TaskState.FAILED,
            "cache-1 reported an unknown result in step:3 (Warm cache): tentacle restarted",
        )
    ]
    assert states(c)["cache-1"] == ("step:3", "unknown")


def test_duplicate_and_out_of_order_reports_are_ignored() -> None:
    """Repeated reports, reports for gates not open and unknown machines change nothing."""
    c = coordinator()
    assert ok(c, "web-1", 0) == []  # before start
    c.start()
    assert ok(c, "web-1", 1) == []  # a gate not open yet
    assert ok(c, "db-1", 0) == []  # db-1 has nothing in gate 0
    assert ok(c, "nobody", 0) == []
    assert opened(ok(c, "web-1", 0)) == [("web-1", 1), ("db-1", 1)]
    assert ok(c, "web-1", 0) == []  # a duplicate of the report just handled
    assert ok(c, "web-1", 1) == []
    assert ok(c, "web-1", 1) == []  # a duplicate while db-1 is still running
    assert c.target_finished("web-1", 1, "failed", "late retry") == []
    assert ok(c, "db-1", 1) == [OpenGate("web-1", 2, "step:1")]
    assert c.state == "running"


def test_bad_outcome_is_an_error() -> None:
    """An outcome outside success/failed/unknown is refused loudly."""
    c = coordinator()
    c.start()
    with pytest.raises(GateError):
        c.target_finished("web-1", 0, "maybe", "")  # type: ignore[arg-type]


def test_cancel_stops_running_targets_and_ends_when_they_report() -> None:
    """cancel sends CancelTarget to running targets; the task ends once they have reported."""
    c = coordinator()
    c.start()
    ok(c, "web-1", 0)
    assert c.cancel("operator asked") == [CancelTarget("web-1"), CancelTarget("db-1")]
    assert c.cancel("again") == []
    assert c.target_finished("web-1", 1, "failed", "killed") == []
    assert (c.state, c.error) == ("running", None)
    assert ok(c, "db-1", 1) == [TaskFinished(TaskState.CANCELLED, "cancelled: operator asked")]
    assert (c.state, c.error) == ("cancelled", "cancelled: operator asked")
    assert {state for _, state in states(c).values()} == {"cancelled"}


def test_cancel_with_nothing_running_ends_at_once() -> None:
    """Cancelling a task that has not started ends it immediately."""
    c = coordinator()
    assert c.cancel("not needed") == [TaskFinished(TaskState.CANCELLED, "cancelled: not needed")]
    assert c.start() == []
    assert c.cancel("again") == []


def test_failure_before_cancel_keeps_the_task_failed() -> None:
    """When a failure came first, a later cancel still stops targets but the task ends failed."""
    c = coordinator({"web-1": ["web"], "web-2": ["web"]})
    c.start()
    c.target_finished("web-1", 0, "failed", "boom")
    assert c.cancel("stop") == [CancelTarget("web-2")]
    assert c.target_finished("web-2", 0, "failed", "killed") == [
        TaskFinished(TaskState.FAILED, "web-1 failed in preAcquisition: boom")
    ]


def test_lost_running_target_fails_the_task() -> None:
    """A target lost mid-gate counts as failed there."""
    c = coordinator()
    c.start()
    assert c.target_lost("web-1", "connection closed") == [
        TaskFinished(TaskState.FAILED, "web-1 was lost in preAcquisition: connection closed")
    ]
    assert c.target_lost("web-1", "again") == []


def test_lost_waiting_target_fails_the_task_once_others_report() -> None:
    """A target lost after passing the gate still fails it; running targets finish first."""
    c = coordinator()
    c.start()
    ok(c, "web-1", 0)
    ok(c, "web-1", 1)
    assert c.target_lost("web-1", "gone") == []
    assert ok(c, "db-1", 1) == [TaskFinished(TaskState.FAILED, "web-1 was lost in acquisition: gone")]
    assert c.target_lost("db-1", "late") == []
    assert c.target_lost("nobody", "?") == []


def test_plans_without_work_pass_every_gate() -> None:
    """Targets with nothing to do anywhere finish the task at start."""
    c = coordinator({"idle-1": ["none"], "idle-2": ["other"]})
    assert c.gates == ("preAcquisition", "acquisition")
    assert c.start() == [TaskFinished(TaskState.SUCCESS, None)]
    assert c.start() == []


def test_no_targets_is_an_error() -> None:
    """A task with no targets cannot be coordinated."""
    with pytest.raises(GateError, match="plans: a task needs at least one target") as caught:
        TaskCoordinator("T-1", {})
    assert isinstance(caught.value, TentacleError)
    assert isinstance(caught.value, ValueError)


def test_plans_must_match_task_and_machine() -> None:
    """A plan of another task or filed under another machine name is refused."""
    with pytest.raises(GateError) as caught:
        TaskCoordinator("T-1", {"web-1": plan("web-1", ["web"], "T-2"), "x": plan("y", ["db"])})
    assert caught.value.problems == [
        ("plans.web-1.taskId", "must be 'T-1'"),
        ("plans.x.machineName", "must be 'x'"),
    ]


def test_snapshot_restore_mid_task() -> None:
    """A restored coordinator equals the original and continues exactly as it would have."""
    c = coordinator()
    c.start()
    ok(c, "web-1", 0)
    ok(c, "web-1", 1)
    snapshot = json.loads(json.dumps(c.snapshot()))
    restored = TaskCoordinator.restore(snapshot)
    assert restored.snapshot() == c.snapshot()
    assert restored.target_states() == c.target_states()
    assert restored.resume() == [OpenGate("db-1", 1, "acquisition")]
    for machine, gate in [("db-1", 1), ("web-1", 2), ("db-1", 3), ("cache-1", 4)]:
        assert ok(restored, machine, gate) == ok(c, machine, gate)
    assert restored.snapshot() == c.snapshot()


def test_snapshot_keeps_failure_and_cancellation() -> None:
    """A task restored while failing or cancelling ends the same way."""
    c = coordinator({"web-1": ["web"], "web-2": ["web"]})
    c.start()
    c.target_finished("web-1", 0, "failed", "boom")
    restored = TaskCoordinator.restore(json.loads(json.dumps(c.snapshot())))
    assert ok(restored, "web-2", 0) == [
        TaskFinished(TaskState.FAILED, "web-1 failed in preAcquisition: boom")
    ]
    assert restored.resume() == [TaskFinished(TaskState.FAILED, "web-1 failed in preAcquisition: boom")]
    c = coordinator()
    c.start()
    c.cancel("stop")
    restored = TaskCoordinator.restore(c.snapshot())
    assert restored.resume() == [CancelTarget("web-1")]
    assert ok(restored, "web-1", 0) == [TaskFinished(TaskState.CANCELLED, "cancelled: stop")]


SNAPSHOT_PROBLEMS: list[tuple[Callable[[dict[str, Any]], object], tuple[str, str]]] = [
    (lambda s: s.update(version=2), ("version", "expected an integer <= 1")),
    (
        lambda s: s.update(state="paused"),
        ("state", "expected queued, running, success, failed or cancelled, got 'paused'"),
    ),
    (lambda s: s.update(current=9), ("current", "must be a gate index from 0 to 5")),
    (lambda s: s.update(gateLabels=["x"]), ("gateLabels", "must have one label per gate")),
    (lambda s: s.update(targets=[]), ("targets", "expected a list of length >= 1")),
    (
        lambda s: s["targets"][0].update(work=[6]),
        ("targets[0].work[0]", "must be a gate index from 0 to 5"),
    ),
    (
        lambda s: s["targets"][0].update(state="asleep"),
        (
            "targets[0].state",
            "expected waiting, running, success, failed, cancelled or unknown, got 'asleep'",
        ),
    ),
    (
        lambda s: s["targets"].append(s["targets"][0]),
        ("targets[3].machineName", "duplicate machine name"),
    ),
    (lambda s: s.update(extra=1), ("extra", "unknown field")),
]


@pytest.mark.parametrize(("change", "problem"), SNAPSHOT_PROBLEMS)
def test_restore_rejects_malformed_snapshots(
    change: Callable[[dict[str, Any]], object], problem: tuple[str, str]
) -> None:
    """restore names what is wrong with a snapshot instead of building a broken coordinator."""
    snapshot = coordinator().snapshot()
    change(snapshot)
    with pytest.raises(GateError) as caught:
        TaskCoordinator.restore(snapshot)
    assert caught.value.problems == [problem]


def test_restore_rejects_non_objects() -> None:
    """A snapshot that is not an object is refused."""
    with pytest.raises(GateError) as caught:
        TaskCoordinator.restore([])
    assert caught.value.problems == [("document", "expected an object, got a list")]


def test_a_snapshot_stored_with_the_old_pending_state_restores_as_queued() -> None:
    """Snapshots stored before the shared vocabulary (a task not started read "pending") still restore."""
    snapshot = coordinator().snapshot()
    assert snapshot["state"] == "queued"
    restored = TaskCoordinator.restore(dict(snapshot, state="pending"))
    assert restored.state == TaskState.QUEUED
    assert restored.snapshot() == snapshot
    assert restored.start() == [OpenGate("web-1", 0, "preAcquisition")]


def test_a_step_name_of_the_longest_length_survives_a_snapshot() -> None:
    """A gate label (``step:<index> (<name>)``) may be longer than a name; its snapshot still restores."""
    long_name = "n" * 200
    steps = [{"name": long_name, "roles": ["web"], "script": {"syntax": "sh", "body": "x"}}]
    process = parse_process({"name": "Shop", "steps": steps})
    target = resolve_plan(
        task_id="T-1",
        kind="deployment",
        steps=process.steps,
        variables=(),
        project_name="Shop",
        release_version="1.0",
        environment="Production",
        machine_name="web-1",
        machine_roles=["web"],
        packages={},
        feeds={},
    )
    c = TaskCoordinator("T-1", {"web-1": target})
    assert TaskCoordinator.restore(json.loads(json.dumps(c.snapshot()))).snapshot() == c.snapshot()


# --- property: the gate rules hold under any sequence of events ------------------------

MACHINES = list(THREE)
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["finish", "finish", "finish", "lost", "cancel"]),
        st.sampled_from([*MACHINES, "stranger"]),
        st.one_of(st.none(), st.integers(0, 6)),  # None: the gate currently open
        st.sampled_from(["success", "success", "success", "failed", "unknown"]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_gate_rules_hold_for_any_event_sequence(
    events: list[tuple[str, str, int | None, GateOutcome]],
) -> None:
    """Gates never go back, open only after all passed, never after a failure; one ending."""
    plans = {name: plan(name, roles) for name, roles in THREE.items()}
    c = TaskCoordinator("T-1", plans)
    history: list[Action] = c.start()
    failed = False
    for kind, machine, gate, outcome in events:
        before = {t.machine_name: t.state for t in c.target_states()}
        current = c.current_gate
        if kind == "finish":
            accepted = before.get(machine) == "running" and gate in (None, current)
            actions = c.target_finished(machine, current if gate is None else gate, outcome)
            failed = failed or (accepted and outcome != "success")
        elif kind == "lost":
            actions = c.target_lost(machine, "gone")
            failed = failed or before.get(machine) in ("waiting", "running", "success")
        else:
            actions = c.cancel("stop")
        for action in actions:
            if isinstance(action, OpenGate) and action.gate_index > current:
                assert not failed
                others = {m: s for m, s in before.items() if m != machine}
                assert set(others.values()) <= {"success"}
        history.extend(actions)
    gates = [a.gate_index for a in history if isinstance(a, OpenGate)]
    assert gates == sorted(gates)
    endings = [i for i, a in enumerate(history) if isinstance(a, TaskFinished)]
    assert len(endings) <= 1
    assert not endings or endings[0] == len(history) - 1
    restored = TaskCoordinator.restore(json.loads(json.dumps(c.snapshot())))
    assert restored.snapshot() == c.snapshot()


def _reasons(c: TaskCoordinator) -> dict[str, tuple[str, str | None]]:
    return {t.machine_name: (t.state, t.reason) for t in c.target_states()}


def test_a_cancel_not_confirmed_in_time_ends_the_task_saying_who_did_not_confirm() -> None:
    """cancel_unconfirmed: targets still running read unknown "cancel not confirmed"; the task ends
    cancelled at once, naming them; before a cancel it does nothing."""
    c = coordinator({"web-1": ["web"], "web-2": ["web"]})
    c.start()
    assert c.cancel_unconfirmed() == []
    assert c.cancel("by admin") == [CancelTarget("web-1"), CancelTarget("web-2")]
    assert c.target_finished("web-1", 0, "failed", "cancelled") == []
    assert c.cancel_unconfirmed() == [
        TaskFinished(TaskState.CANCELLED, f"cancelled: by admin ({CANCEL_NOT_CONFIRMED} by web-2)")
    ]
    assert _reasons(c) == {"web-1": ("cancelled", "cancelled"), "web-2": ("unknown", CANCEL_NOT_CONFIRMED)}
    assert TaskCoordinator.restore(json.loads(json.dumps(c.snapshot()))).target_states() == c.target_states()


def test_abort_stops_running_targets_and_fails_the_task_now() -> None:
    """abort (the server's own storage failed): running targets are told to cancel and read so, with
    the reason; the task ends failed at once with it; a finished task ignores it."""
    c = coordinator({"web-1": ["web"], "db-1": ["db"]})
    c.start()
    actions = c.abort("disk full")
    assert actions == [
        CancelTarget("web-1"),
        TaskFinished(TaskState.FAILED, "the server stopped the task in preAcquisition: disk full"),
    ]
    assert _reasons(c)["web-1"] == ("cancelled", "stopped by the server: disk full")
    assert c.abort("again") == []


def test_every_failed_target_keeps_its_own_reason() -> None:
    """Not only the first failure is told: each failed or lost target says why."""
    c = coordinator({"web-1": ["web"], "web-2": ["web"]})
    c.start()
    c.target_finished("web-1", 0, "failed", "exit code 3")
    c.target_lost("web-2", "rogue answered task.status with 99 bytes, over the limit")
    assert _reasons(c) == {
        "web-1": ("failed", "exit code 3"),
        "web-2": ("failed", "rogue answered task.status with 99 bytes, over the limit"),
    }
