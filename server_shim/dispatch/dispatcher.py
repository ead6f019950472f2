"""Runs tasks: one coordinator per task, one driver per target, all durable.

How it works. A new task is queued; it starts when none of its machines is busy with
an earlier task (so two tasks never wait on each other's gates). A running task has
a `TaskCoordinator` (the pure gate machine) and a driver per target. A driver sends
``task.start`` (idempotent), then long-polls ``task.status``: new log lines go to the
database (masked again here), finished gates go to the coordinator, whose actions
(``task.gate``, ``task.cancel``) are sent by small retrying senders. Every event's
snapshot is saved before its actions are sent, so a restarted server rebuilds the
coordinator, re-sends what may have been lost (all tentacle calls are idempotent),
and reads each target's log from the last line it stored.

A target that cannot be reached for `lost_after` seconds is lost: its gate fails,
and with it the task, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from server_shim.dispatch.fleet import Fleet
from server_shim.store import task_rows as tasks
from server_shim.store.database import Database
from server_shim.store.machine_rows import Machine
from server_shim.store.task_rows import TaskRecord
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.coordinator import (
    OUTCOMES,
    Action,
    CancelTarget,
    GateOutcome,
    OpenGate,
    TaskCoordinator,
    TaskFinished,
)
from tentacle.protocol.masking import Masker
from tentacle.protocol.messages import Method
from tentacle.protocol.plan import Plan
from tentacle.protocol.rpc_messages import (
    TASK_CANCEL,
    TASK_FINISH,
    TASK_GATE,
    TASK_START,
    TASK_STATUS,
    BadAnswer,
    Call,
    GateParams,
    StartParams,
    StatusParams,
    StatusResult,
    StopParams,
    TentacleTaskState,
)
from tentacle.protocol.states import GateState
from tentacle.protocol.wire import Wire

log = logging.getLogger("server_shim.dispatch.dispatcher")
STATUS_WAIT = 20.0
RETRY_DELAY = 1.0
P = TypeVar("P", bound=Wire)
R = TypeVar("R", bound=Wire)


GateHook = Callable[[Plan, str], Awaitable[None]]  # (the target's plan, the gate's name), on each OpenGate


class TargetGone(Exception):
    """This target cannot take part any more (not reachable for too long, or refused)."""


class TaskRun:
    """One running task: its coordinator, its drivers, its senders."""

    def __init__(self, dispatcher: Dispatcher, record: TaskRecord, coordinator: TaskCoordinator) -> None:
        self.d = dispatcher
        self.record = record
        self.coordinator = coordinator
        self.masker = Masker({v for plan in record.plans.values() for v in plan.sensitive_values()})
        self.lock = asyncio.Lock()
        self.finished = asyncio.Event()
        self.opened: dict[str, set[int]] = {name: set() for name in record.plans}
        # A gate must not reach a target before its task.start did: set by the driver.
        self.started: dict[str, asyncio.Event] = {name: asyncio.Event() for name in record.plans}
        # Set when a target is cancelled or the task ends: its gate hooks (pushes) stop.
        self.halted: dict[str, asyncio.Event] = {name: asyncio.Event() for name in record.plans}
        self.jobs: set[asyncio.Task[None]] = set()

    @property
    def task_id(self) -> str:
        return self.record.task_id

    def spawn(self, coro: Any) -> None:
        """Run a job of this task in the background, keeping a reference."""
        job = asyncio.create_task(coro)
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    async def event(self, fire: Callable[[TaskCoordinator], list[Action]]) -> None:
        """Feed one event to the coordinator, save its snapshot, then act."""
        async with self.lock:
            if self.finished.is_set():
                return
            actions = fire(self.coordinator)
            if not actions:
                return
            state = self.coordinator.state  # one vocabulary (states.py): not started reads "queued"
            await self.d.db.run(
                tasks.save_progress, self.task_id, state, self.coordinator.error, self.coordinator.snapshot()
            )
            for action in actions:
                self._act(action)

    def _act(self, action: Action) -> None:
        if isinstance(action, OpenGate):
            self.opened[action.machine].add(action.gate_index)
            params = GateParams(
                task_id=self.task_id, gate_index=action.gate_index, gate_name=action.gate_name
            )
            self.spawn(self.open_gate(action.machine, action.gate_name, params))
            event(log, "gate.opened", task=self.task_id, target=action.machine, gate=action.gate_name)
        elif isinstance(action, CancelTarget):
            self.halted[action.machine].set()
            self.spawn(self.send(action.machine, TASK_CANCEL, StopParams(task_id=self.task_id)))
        elif isinstance(action, TaskFinished):
            self.finished.set()
            for halted in self.halted.values():
                halted.set()
            event(log, f"task.{action.state}", task=self.task_id, error=action.error or "")
            self.spawn(self.d.finished(self))

    async def open_gate(self, name: str, gate_name: str, params: GateParams) -> None:
        """Run the gate hooks for this target (pushing its packages, say), then send the gate.

        A hook that fails is logged and passed over: what it prepares, the tentacle can
        still get by itself (a package it was not pushed, it fetches from the feed).
        """
        await self.started[name].wait()
        try:  # a machine replaced since the task began gets none of its packages either
            await self.d._machine(name, self.record.created_at)
        except TargetGone as exc:
            reason = str(exc)
            await self.event(lambda c: c.target_lost(name, reason))
            return
        for hook in self.d.gate_hooks:
            try:
                await self._unless_halted(name, hook(self.record.plans[name], gate_name))
            except Exception as exc:
                event(
                    log, "gate.hook_failed", logging.WARNING, task=self.task_id, target=name, reason=str(exc)
                )
        await self.send(name, TASK_GATE, params)

    async def _unless_halted(self, name: str, work: Awaitable[None]) -> None:
        """Run `work`, stopping it if the target is cancelled or the task ends first."""
        job = asyncio.ensure_future(work)
        ended = asyncio.ensure_future(self.halted[name].wait())
        try:
            await asyncio.wait({job, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (job, ended):
                waiting.cancel()
            await asyncio.gather(job, ended, return_exceptions=True)
        if not job.cancelled() and job.exception() is not None:
            raise cast(BaseException, job.exception())

    async def send(self, name: str, call: Call[P, Any], params: P) -> None:
        """Deliver one idempotent call, retrying until it lands or the target is gone."""
        try:
            await self.started[name].wait()
            await self.d.call_until(self, name, call, params, timeout=30.0)
        except TargetGone as exc:
            reason = str(exc)
            await self.event(lambda c: c.target_lost(name, reason))

    async def drive(self, name: str) -> None:
        """Follow one target: start it, then relay its log and gate results until the task ends."""
        start = StartParams(plan=self.record.plans[name].to_json())
        since = await self.d.db.run(tasks.last_machine_seq, self.task_id, name)
        version, started = 0, False
        try:
            while not self.finished.is_set():
                if not started:
                    await self.d.call_until(self, name, TASK_START, start, timeout=30.0)
                    started = True
                    self.started[name].set()
                params = StatusParams(
                    task_id=self.task_id, log_since=since, version=version, wait=STATUS_WAIT
                )
                status = await self.d.call_until(self, name, TASK_STATUS, params, timeout=STATUS_WAIT + 15)
                since = await self._store_log(name, status, since)
                version = status.version
                if status.state is TentacleTaskState.UNKNOWN_TASK:
                    if self.opened[name]:
                        raise TargetGone("the tentacle has no record of this task (its state was lost)")
                    started = False
                    continue
                if not status.more:
                    await self._report_gates(name, status)
        except TargetGone as exc:
            reason = str(exc)
            await self.event(lambda c: c.target_lost(name, reason))

    async def _store_log(self, name: str, status: StatusResult, since: int) -> int:
        """Store the answer's log lines, masked again here; returns the last seq stored."""
        if not status.log:
            return since
        lines = [
            {
                "seq": line.seq,
                "time": line.time,
                "stream": line.stream.value,
                "step": line.step,
                "text": self.masker.mask(line.text),
            }
            for line in status.log
        ]
        return max(since, await self.d.db.run(tasks.append_log, self.task_id, name, lines))

    async def _report_gates(self, name: str, status: StatusResult) -> None:
        """Feed every gate that ended to the coordinator (it ignores repeats)."""
        for gate in status.gates:
            if gate.state is GateState.RUNNING:
                continue
            outcome = cast(GateOutcome, gate.state.value if gate.state in OUTCOMES else "failed")
            reason = self.masker.mask(gate.reason or gate.state.value)
            await self.event(functools.partial(_finished, name, gate.index, outcome, reason))


def _finished(name: str, index: int, outcome: GateOutcome, reason: str, c: TaskCoordinator) -> list[Action]:
    return c.target_finished(name, index, outcome, reason)


class Dispatcher:
    """All running and queued tasks of this server."""

    def __init__(self, db: Database, fleet: Fleet, lost_after: float = 120.0) -> None:
        self.db, self.fleet = db, fleet
        self.lost_after = lost_after
        self.runs: dict[str, TaskRun] = {}
        self.queue: list[TaskRecord] = []
        self.drivers: set[asyncio.Task[None]] = set()
        self.gate_hooks: list[GateHook] = []

    async def start(self) -> None:
        """Pick up the tasks a previous server left unfinished."""
        for record in await self.db.run(tasks.unfinished):
            if record.state == "running":
                self._launch(record, TaskCoordinator.restore(record.coordinator), resume=True)
            else:
                self.queue.append(record)
        await self.schedule()

    async def submit(self, record: TaskRecord) -> None:
        """A new task was stored: queue it and start what can start."""
        self.queue.append(record)
        await self.schedule()

    def busy(self) -> set[str]:
        """Machines taken by running tasks."""
        return {name for run in self.runs.values() for name in run.record.plans}

    async def schedule(self) -> None:
        """Start queued tasks, oldest first, whose machines are all free."""
        for record in list(self.queue):
            if set(record.plans) & self.busy():
                continue
            self.queue.remove(record)
            self._launch(record, TaskCoordinator.restore(record.coordinator), resume=False)

    def _launch(self, record: TaskRecord, coordinator: TaskCoordinator, *, resume: bool) -> None:
        run = self.runs[record.task_id] = TaskRun(self, record, coordinator)
        event(
            log, "task.resumed" if resume else "task.started", task=record.task_id, targets=len(record.plans)
        )
        run.spawn(run.event(lambda c: c.resume() if resume else c.start()))
        for name in record.plans:
            driver = asyncio.create_task(run.drive(name))
            self.drivers.add(driver)
            driver.add_done_callback(self.drivers.discard)

    async def call_until(self, run: TaskRun, name: str, call: Call[P, R], params: P, timeout: float) -> R:
        """Call a target, retrying transport failures for up to `lost_after` seconds."""
        method = call.method
        first_failure: float | None = None
        while True:
            try:
                machine = await self._machine(name, run.record.created_at)
                return await self.fleet.call(machine, call, params, timeout)
            except TentacleError as exc:
                if not exc.retryable:
                    # A malformed answer's message names the machine already; a refusal's does not.
                    refused = f"{name} refused {method}: {exc.message}"
                    raise TargetGone(exc.message if isinstance(exc, BadAnswer) else refused) from exc
                first_failure = first_failure or time.monotonic()
                if time.monotonic() - first_failure > self.lost_after:
                    raise TargetGone(
                        f"{name} unreachable for {self.lost_after:.0f} s: {exc.message}"
                    ) from exc
            if run.finished.is_set() and method is not Method.TASK_FINISH:
                raise TargetGone("the task has finished")
            await asyncio.sleep(RETRY_DELAY)

    async def _machine(self, name: str, task_created: float) -> Machine:
        """The machine a task created at ``task_created`` may call by this name.

        A machine registered after the task was created is another machine under the old
        name (``register --force``): the task's plan, secrets and all, is not for it.
        """
        found = await self.fleet.machine(name)
        if found is None:
            raise TargetGone(f"machine {name!r} was removed")
        if found.registered_at > task_created:
            raise TargetGone(
                f"machine {name!r} was replaced by a new registration (certificate {found.thumbprint})"
                " after this task was created; its part of the task is not handed to the new machine"
            )
        return found

    async def finished(self, run: TaskRun) -> None:
        """A task ended: drain the last log lines, release its targets, start the next task.

        Each target is then told `task.finish` in the background, retried (backing off to
        30 s) until it lands: a tentacle that never hears it would hold its one task slot,
        and every later task to it would wait there.
        """
        await asyncio.gather(*(self._drain(run, name) for name in run.record.plans))
        self.runs.pop(run.task_id, None)
        for name in run.record.plans:
            self._background(self._finish(run.task_id, name, run.record.created_at))
        await self.schedule()

    def _background(self, coro: Any) -> None:
        job = asyncio.create_task(coro)
        self.drivers.add(job)
        job.add_done_callback(self.drivers.discard)

    async def _drain(self, run: TaskRun, name: str) -> None:
        """Store the target's last log lines (best effort: one try)."""
        with contextlib.suppress(TentacleError, TargetGone):
            machine = await self._machine(name, run.record.created_at)
            since = await self.db.run(tasks.last_machine_seq, run.task_id, name)
            params = StatusParams(task_id=run.task_id, log_since=since)
            await run._store_log(name, await self.fleet.call(machine, TASK_STATUS, params, 10), since)

    async def _finish(self, task_id: str, name: str, task_created: float) -> None:
        """Deliver task.finish to one target, however long it takes (until it is removed or replaced)."""
        delay = RETRY_DELAY
        while True:
            try:
                machine = await self._machine(name, task_created)
                await self.fleet.call(machine, TASK_FINISH, StopParams(task_id=task_id), 10)
                return
            except TargetGone:
                return  # it is gone for good
            except TentacleError as exc:
                if not exc.retryable:
                    return  # it answered (it knows the task no more)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def cancel(self, task_id: str, reason: str) -> str:
        """Cancel a queued or running task; returns the state it is now in."""
        for record in self.queue:
            if record.task_id == task_id:
                self.queue.remove(record)
                await self.db.run(tasks.save_progress, task_id, "cancelled", reason, record.coordinator)
                return "cancelled"
        run = self.runs.get(task_id)
        if run is None:
            return str((await self.db.run(tasks.get, task_id)).state)
        await run.event(lambda c: c.cancel(reason))
        return "cancelling"

    async def close(self) -> None:
        """Stop following tasks (they stay running in the database for the next start)."""
        everything = [*self.drivers, *(job for run in self.runs.values() for job in run.jobs)]
        for job in everything:
            job.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
