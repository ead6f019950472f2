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
under its name since the task was created: the task's plan, secrets and all, is never
handed to the newcomer (those rules of calling a target live in
server_shim.dispatch.target_calls). When a task ends, its drivers stop, each
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
from typing import Any, Final

from server_shim.dispatch import books, timetable
from server_shim.dispatch.fleet import Fleet
from server_shim.dispatch.log_sink import LogSink
from server_shim.dispatch.target_calls import RETRY_DELAY, TargetCalls, TargetGone
from server_shim.dispatch.task_queue import TaskQueue
from server_shim.dispatch.task_run import GateHook, TaskRun
from server_shim.store import node_rows
from server_shim.store import task_rows as tasks
from server_shim.store.database import Database
from server_shim.store.task_rows import TaskRecord
from tentacle.common.logs import event
from tentacle.errors import StorageError, TentacleError
from tentacle.protocol.coordinator import Action, TaskCoordinator

log = logging.getLogger("server_shim.dispatch.dispatcher")
DRAIN_SECONDS: Final = 30.0  # the most a finished task spends reading its targets' last lines

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
        self.cancel_timeout = cancel_timeout
        self.sink = LogSink(db, log_limit)
        self.targets = TargetCalls(db, fleet, self.sink, lost_after)
        self.runs: dict[str, TaskRun] = {}
        self.unsaved: dict[str, TaskRun] = {}  # ended, but the database did not take the final state yet
        self.queue = TaskQueue()
        self.drivers: set[asyncio.Task[None]] = set()
        self.gate_hooks: list[GateHook] = []
        fleet.on_forget.append(self.machine_removed)

    async def start(self) -> None:
        """Pick up the tasks this node left unfinished, and those no live node owns."""
        for record in await self.db.run(node_rows.take_unfinished, self.node):
            self.adopt(record)
        await self.schedule()

    def adopt(self, record: TaskRecord) -> None:
        """A task this node owns now: resume it when it was running, else queue it."""
        if record.task_id in self.runs or self.queue.holds(record.task_id):
            return
        if record.state == "running":
            self._launch(record, resume=True)
        else:
            self.queue.add(record)

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
                self.queue.add(record)
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
        now = time.time()
        for record, start in self.queue.sweep(now, self.busy()):
            if start:
                self._launch(record, resume=False)
                continue
            reason = timetable.expiry_reason(record)
            await self.save(record.task_id, "cancelled", reason, record.coordinator)
            event(log, "task.cancelled", task=record.task_id, error=reason)
        self._arm(now)

    def _arm(self, now: float) -> None:
        """Wake `schedule` at the next time a queued task becomes due or expires."""
        self.queue.arm(now, lambda: self._background(self.schedule()))

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

    def machine_removed(self, space: str, name: str) -> None:
        """A machine was removed or replaced: its part in every running task ends now."""
        for run in list(self.runs.values()):
            if run.record.space == space and name in run.record.plans and not run.finished.is_set():
                run.spawn(_end_if_removed(self.targets, run, name))

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
                *(self.targets.drain(run, name) for name in run.record.plans), return_exceptions=True
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
                self._background(
                    self.targets.deliver_finish(run.task_id, run.record.space, name, run.record.created_at)
                )
            await self.schedule()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        job = asyncio.create_task(coro)
        self.drivers.add(job)
        job.add_done_callback(self.drivers.discard)

    async def cancel(self, task_id: str, reason: str) -> str:
        """Cancel a queued or running task; returns the state it is now in."""
        record = self.queue.find(task_id)
        if record is not None:
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
        self.queue.disarm()
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


async def _end_if_removed(targets: TargetCalls, run: TaskRun, name: str) -> None:
    """End ``name``'s part in ``run`` if it was removed or replaced, saying which."""
    reason = await targets.removal(run, name)
    if reason is not None:
        event(log, "task.target_removed", task=run.task_id, target=name, reason=reason)
        await run.event(functools.partial(_lost, name, reason))


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
