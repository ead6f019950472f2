"""Runs tasks: one coordinator per task, one driver per target, all durable.

How it works. A new task is queued; it starts when none of its machines is busy with
an earlier task (so two tasks never wait on each other's gates). A running task is a
`TaskRun` (server_shim.dispatch.task_run): the pure gate machine, a driver per target
and the jobs that send its actions; its log lines go through the one `LogSink`. Every
event's snapshot is saved before its actions are sent, so a restarted server rebuilds
the coordinator, re-sends what may have been lost (all tentacle calls are idempotent),
and reads each target's log from the last line it read.

A target that cannot be reached for `lost_after` seconds is lost: its gate fails, and
with it the task, with the reason. A target that breaks the protocol's limits, or is
removed (`machine_removed`), fails at once; so does one replaced by a new registration
under its name since the task was created (`machine_of`): the task's plan, secrets and
all, is never handed to the newcomer. When a task ends, its drivers stop, each
target's remaining lines are drained for at most `DRAIN_SECONDS`, its machines are
released and the next queued task starts, whatever went wrong on the way. A final state
the database could not take (a full disk) is kept here, shown by the API (`live`), and
written as soon as the database takes it again (`_keep_saving`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from server_shim.dispatch import books, timetable
from server_shim.dispatch.fleet import Fleet
from server_shim.dispatch.log_sink import LogSink
from server_shim.dispatch.reply_limits import Misbehaved
from server_shim.dispatch.task_run import GateHook, TargetGone, TaskRun
from server_shim.store import log_rows, node_rows
from server_shim.store import task_rows as tasks
from server_shim.store.database import Database
from server_shim.store.machine_rows import Machine
from server_shim.store.task_rows import TaskRecord
from tentacle.common.logs import event
from tentacle.errors import StorageError, TentacleError
from tentacle.protocol.coordinator import Action, TaskCoordinator
from tentacle.protocol.messages import Method
from tentacle.protocol.rpc_messages import TASK_FINISH, TASK_STATUS, BadAnswer, Call, StatusParams, StopParams
from tentacle.protocol.wire import Wire

log = logging.getLogger("server_shim.dispatch.dispatcher")
RETRY_DELAY = 1.0
DRAIN_SECONDS: Final = 30.0  # the most a finished task spends reading its targets' last lines
MACHINE_REMOVED: Final = "machine removed"
P = TypeVar("P", bound=Wire)
R = TypeVar("R", bound=Wire)

__all__ = ["Dispatcher", "GateHook", "TargetGone", "TaskRun"]


class Dispatcher:
    """All running and queued tasks of this server."""

    def __init__(
        self,
        db: Database,
        fleet: Fleet,
        lost_after: float = 120.0,
        *,
        cancel_timeout: float = 10.0,
        log_limit: int = 64 * 1024 * 1024,
        node: str = "",
    ) -> None:
        self.db, self.fleet = db, fleet
        self.node = node  # tasks are owned by node name in the database (server_shim.store.node_rows)
        self.lost_after = lost_after
        self.cancel_timeout = cancel_timeout
        self.sink = LogSink(db, log_limit)
        self.runs: dict[str, TaskRun] = {}
        self.unsaved: dict[str, TaskRun] = {}  # ended, but the database did not take the final state yet
        self.queue: list[TaskRecord] = []
        self.drivers: set[asyncio.Task[None]] = set()
        self.gate_hooks: list[GateHook] = []
        self._wake: asyncio.TimerHandle | None = None  # the next runAt or noRunAfter of a queued task
        fleet.on_forget.append(self.machine_removed)

    async def start(self) -> None:
        """Pick up the tasks this node left unfinished, and those no live node owns."""
        for record in await self.db.run(node_rows.take_unfinished, self.node):
            self.adopt(record)
        await self.schedule()

    def adopt(self, record: TaskRecord) -> None:
        """A task this node owns now: resume it when it was running, else queue it."""
        if record.task_id in self.runs or any(r.task_id == record.task_id for r in self.queue):
            return
        if record.state == "running":
            self._launch(record, resume=True)
        else:
            self.queue.append(record)

    def let_go(self, run: TaskRun | None = None) -> None:
        """Stop driving ``run`` (or every task) here, writing nothing: another node owns it now.

        Its machines are not told to finish and no state is saved: the new owner resumes
        it from the last snapshot, and re-sends what may not have arrived.
        """
        for each in [run] if run is not None else list(self.runs.values()):
            each.finished.set()
            self.runs.pop(each.task_id, None)
            self.sink.forget(each.task_id)
            for job in (*each.jobs, *each.drivers.values()):
                if job is not asyncio.current_task():
                    job.cancel()
            event(log, "task.let_go", task=each.task_id, node=self.node)
        if run is None:
            self.queue.clear()

    async def save(self, task_id: str, state: str, error: str | None, coordinator: dict[str, Any]) -> None:
        """Store a task's snapshot while this node owns it (`node_rows.LeaseLost` otherwise)."""
        await books.write(self.db, node_rows.save_owned, task_id, self.node, state, error, coordinator)

    async def submit(self, *records: TaskRecord) -> None:
        """New tasks were stored: start those that are due and whose machines are free, queue the rest.

        Only the new tasks are looked at: for those queued before, nothing has changed (no
        machine was freed), so a create costs the same with a thousand tasks queued as with none.
        """
        won = await self.db.run(node_rows.claim_new, [r.task_id for r in records], self.node)
        now, busy = time.time(), self.busy()
        timed = False
        for record in (r for r in records if r.task_id in won):
            timed = timed or record.run_at is not None or record.no_run_after is not None
            if timetable.due(record, now) and not record.machine_keys & busy:
                busy |= record.machine_keys
                self._launch(record, resume=False)
            else:
                self.queue.append(record)
        if timed:
            self._arm(now)

    def busy(self) -> set[tuple[str, str]]:
        """Machines (space, name) taken by running tasks."""
        return {key for run in self.runs.values() for key in run.record.machine_keys}

    def live(self, task_id: str) -> TaskRun | None:
        """The run of a task this server is running, or has ended without storing it yet."""
        return self.runs.get(task_id) or self.unsaved.get(task_id)

    async def schedule(self) -> None:
        """Start queued tasks, oldest first, that are due and whose machines are all free.

        A queued task past its noRunAfter is cancelled instead; then a timer is set for the
        next runAt or noRunAfter of what still waits.
        """
        now, busy = time.time(), self.busy()
        for record in list(self.queue):
            if timetable.expired(record, now):
                self.queue.remove(record)
                reason = timetable.expiry_reason(record)
                await self.save(record.task_id, "cancelled", reason, record.coordinator)
                event(log, "task.cancelled", task=record.task_id, error=reason)
                continue
            keys = record.machine_keys
            if not timetable.due(record, now) or keys & busy:
                continue
            self.queue.remove(record)
            busy |= keys
            self._launch(record, resume=False)
        self._arm(now)

    def _arm(self, now: float) -> None:
        """Wake `schedule` at the next time a queued task becomes due or expires."""
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        wake = timetable.wake_at(self.queue, now)
        if wake is not None:
            loop = asyncio.get_running_loop()
            self._wake = loop.call_later(wake - now + 0.01, lambda: self._background(self.schedule()))

    def _launch(self, record: TaskRecord, *, resume: bool) -> None:
        try:
            coordinator = TaskCoordinator.restore(record.coordinator)
        except TentacleError as exc:  # a snapshot this server cannot read: the task cannot go on
            event(log, "task.unreadable", logging.ERROR, task=record.task_id, reason=exc.message)
            self._background(self._fail_stored(record, f"the server cannot read this task: {exc.message}"))
            return
        run = self.runs[record.task_id] = TaskRun(self, record, coordinator)
        event(
            log, "task.resumed" if resume else "task.started", task=record.task_id, targets=len(record.plans)
        )
        run.launch(resume=resume)

    async def _fail_stored(self, record: TaskRecord, reason: str) -> None:
        with contextlib.suppress(StorageError, node_rows.LeaseLost):
            await self.save(record.task_id, "failed", reason, record.coordinator)

    async def call_until(self, run: TaskRun, name: str, call: Call[P, R], params: P, timeout: float) -> R:
        """Call a target, retrying transport failures for up to `lost_after` seconds."""
        method = call.method
        first_failure: float | None = None
        while True:
            try:
                machine = await self.machine_of(run.record.space, name, run.record.created_at)
                return await self.fleet.call(machine, call, params, timeout)
            except TentacleError as exc:
                if not exc.retryable:
                    # A malformed or oversized answer's message names the machine; a refusal's does not.
                    named = isinstance(exc, BadAnswer | Misbehaved)
                    raise TargetGone(
                        exc.message if named else f"{name} refused {method}: {exc.message}"
                    ) from exc
                first_failure = first_failure or time.monotonic()
                if time.monotonic() - first_failure > self.lost_after:
                    raise TargetGone(
                        f"{name} unreachable for {self.lost_after:.0f} s: {exc.message}"
                    ) from exc
            if run.finished.is_set() and method is not Method.TASK_FINISH:
                raise TargetGone("the task has finished")
            await asyncio.sleep(RETRY_DELAY)

    async def machine_of(self, space: str, name: str, task_created: float | None = None) -> Machine:
        """The registered machine `name` of `space` that a task created at ``task_created`` may call.

        `TargetGone` when it was removed, or replaced since: a machine registered after the
        task was created is another machine under the old name (``register --force``).
        """
        found = await self.fleet.machine(name, space)
        if found is None:
            raise TargetGone(f"{MACHINE_REMOVED}: {name!r} is no longer registered")
        if task_created is not None and found.registered_at > task_created:
            raise TargetGone(_replaced(found))
        return found

    def machine_removed(self, space: str, name: str) -> None:
        """A machine was removed or replaced: its part in every running task ends now."""
        for run in list(self.runs.values()):
            if run.record.space == space and name in run.record.plans and not run.finished.is_set():
                run.spawn(self._target_removed(run, name))

    async def _target_removed(self, run: TaskRun, name: str) -> None:
        """End ``name``'s part in ``run``, saying whether it was removed or replaced.

        A machine still registered as it was (its listening port moved) keeps its part.
        """
        found = await self.fleet.machine(name, run.record.space)
        if found is None:
            reason = f"{MACHINE_REMOVED}: {name!r} was removed from the server"
        elif found.registered_at > run.record.created_at:
            reason = _replaced(found)
        else:
            return
        event(log, "task.target_removed", task=run.task_id, target=name, reason=reason)
        await run.event(functools.partial(_lost, name, reason))

    async def finished(self, run: TaskRun) -> None:
        """A task ended: stop its drivers, drain its last lines, release its targets, start the next.

        Each target is then told `task.finish` in the background, retried (backing off to
        30 s) until it lands: a tentacle that never hears it would hold its one task slot,
        and every later task to it would wait there.
        """
        try:
            drivers = list(run.drivers.values())
            for driver in drivers:
                driver.cancel()
            await asyncio.gather(*drivers, return_exceptions=True)
            drains = asyncio.gather(
                *(_drain(self, run, name) for name in run.record.plans), return_exceptions=True
            )
            await asyncio.wait_for(drains, DRAIN_SECONDS)
        except TimeoutError:
            event(log, "task.drain_cut", logging.WARNING, task=run.task_id, seconds=DRAIN_SECONDS)
        finally:
            self.runs.pop(run.task_id, None)
            self.sink.forget(run.task_id)
            if run.unsaved:
                self.unsaved[run.task_id] = run
                self._background(_keep_saving(self, run))
            for name in run.record.plans:
                self._background(self._finish(run.task_id, run.record.space, name, run.record.created_at))
            await self.schedule()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(coro)
        self.drivers.add(job)
        job.add_done_callback(self.drivers.discard)

    async def _finish(self, task_id: str, space: str, name: str, task_created: float) -> None:
        """Deliver task.finish to one target, however long it takes (until it is removed or replaced)."""
        delay = RETRY_DELAY
        while True:
            try:
                machine = await self.machine_of(space, name, task_created)
                await self.fleet.call(machine, TASK_FINISH, StopParams(task_id=task_id), 10)
                return
            except TargetGone:
                return  # it is gone for good
            except TentacleError as exc:
                if not exc.retryable:
                    return  # it answered (it knows the task no more), or it broke a limit
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def cancel(self, task_id: str, reason: str) -> str:
        """Cancel a queued or running task; returns the state it is now in."""
        for record in self.queue:
            if record.task_id == task_id:
                await self.save(task_id, "cancelled", reason, record.coordinator)
                self.queue.remove(record)
                return "cancelled"
        run = self.runs.get(task_id)
        if run is None:
            state = str((await self.db.run(functools.partial(tasks.get, with_plans=False), task_id)).state)
            if state in tasks.FINAL_STATES:
                return state
            await self.db.run(node_rows.ask_cancel, task_id, reason)  # its owner is another node
            return "cancelling"
        await run.event(lambda c: c.cancel(reason))
        return "cancelling"

    async def close(self) -> None:
        """Stop following tasks (they stay running in the database for the next start)."""
        if self._wake is not None:
            self._wake.cancel()
        everything = [
            *self.drivers,
            *(job for run in self.runs.values() for job in (*run.jobs, *run.drivers.values())),
        ]
        for job in everything:
            job.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
        await self.sink.close()


def _lost(name: str, reason: str, c: TaskCoordinator) -> list[Action]:
    return c.target_lost(name, reason)


def _replaced(machine: Machine) -> str:
    return (
        f"machine {machine.name!r} was replaced by a new registration (certificate {machine.thumbprint})"
        " after this task was created; its part of the task is not handed to the new machine"
    )


async def _drain(d: Dispatcher, run: TaskRun, name: str) -> None:
    """Store the target's remaining log lines (best effort: until it has none, or fails)."""
    with contextlib.suppress(TentacleError, TargetGone):
        machine = await d.machine_of(run.record.space, name, run.record.created_at)
        await d.sink.flush(run.task_id, name)
        since = await d.db.run(log_rows.last_machine_seq, run.task_id, name)
        more = True
        while more:
            params = StatusParams(task_id=run.task_id, log_since=since)
            status = await d.fleet.call(machine, TASK_STATUS, params, 10)
            lines = run.rows(status)
            await d.sink.put(run.task_id, name, lines)
            since, more = (max(since, lines[-1][0]) if lines else since), status.more and bool(lines)
        await d.sink.flush(run.task_id, name)


async def _keep_saving(d: Dispatcher, run: TaskRun) -> None:
    """Write a final state the database refused, as soon as it takes it (the API shows it meanwhile)."""
    delay = RETRY_DELAY
    while True:
        try:
            await run.save()
            break
        except StorageError as exc:
            event(log, "task.save_waiting", logging.WARNING, task=run.task_id, reason=exc.message)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
    run.unsaved = False
    d.unsaved.pop(run.task_id, None)
    event(log, "task.saved", task=run.task_id, state=run.coordinator.state)
