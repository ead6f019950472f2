"""How the server talks to a task's targets: who may be called, retries, finish and drain.

How it works. Every call of a task goes to the machine registered under the target's
name, and only if that registration is older than the task (`machine_of`): a machine
removed since, or replaced by a new registration under its name (``register --force``),
is `TargetGone`, so the task's plan, secrets and all, never reach the newcomer. A call
that fails in a way that may pass is tried again until the target has been unreachable
for `lost_after` seconds (`call_until`); one the target refuses, or a malformed or
oversized answer, ends the target's part at once. When a task ends, each target's
remaining lines are read (`drain`) and ``task.finish`` is delivered however long it
takes (`deliver_finish`), backing off to 30 s between tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final, Protocol, TypeVar

from server_shim.dispatch.fleet import Fleet
from server_shim.dispatch.log_sink import LogSink, masked_rows
from server_shim.dispatch.reply_limits import Misbehaved
from server_shim.store import log_rows
from server_shim.store.database import Database
from server_shim.store.machine_rows import Machine
from server_shim.store.task_rows import TaskRecord
from tentacle.errors import TentacleError
from tentacle.protocol.masking import Masker
from tentacle.protocol.messages import Method
from tentacle.protocol.rpc_messages import (
    TASK_FINISH,
    TASK_STATUS,
    BadAnswer,
    Call,
    StatusParams,
    StopParams,
)
from tentacle.protocol.wire import Wire

RETRY_DELAY = 1.0
MACHINE_REMOVED: Final = "machine removed"
P = TypeVar("P", bound=Wire)
R = TypeVar("R", bound=Wire)


class TargetGone(Exception):
    """This target cannot take part any more (not reachable for too long, refused, removed)."""


class Run(Protocol):
    """What the calls need of the running task they serve (a `TaskRun`)."""

    record: TaskRecord
    finished: asyncio.Event

    masker: Masker

    @property
    def task_id(self) -> str:
        """The task's id."""


class TargetCalls:
    """Calls to the targets of this server's tasks, with the rules of who may be called and for how long."""

    def __init__(self, db: Database, fleet: Fleet, sink: LogSink, lost_after: float) -> None:
        self.db, self.fleet, self.sink = db, fleet, sink
        self.lost_after = lost_after

    async def machine_of(self, space: str, name: str, task_created: float | None = None) -> Machine:
        """The registered machine `name` of `space` that a task created at ``task_created`` may call.

        `TargetGone` when it was removed, or replaced since: a machine registered after the
        task was created is another machine under the old name (``register --force``).
        """
        found = await self.fleet.machine(name, space)
        if found is None:
            raise TargetGone(f"{MACHINE_REMOVED}: {name!r} is no longer registered")
        if task_created is not None and found.registered_at > task_created:
            raise TargetGone(replaced(found))
        return found

    async def removal(self, run: Run, name: str) -> str | None:
        """Why ``name`` can no longer take part in ``run`` (removed or replaced), or None.

        A machine still registered as it was (its listening port moved) keeps its part.
        """
        found = await self.fleet.machine(name, run.record.space)
        if found is None:
            return f"{MACHINE_REMOVED}: {name!r} was removed from the server"
        if found.registered_at > run.record.created_at:
            return replaced(found)
        return None

    async def call_until(self, run: Run, name: str, call: Call[P, R], params: P, timeout: float) -> R:
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

    async def deliver_finish(self, task_id: str, space: str, name: str, task_created: float) -> None:
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

    async def drain(self, run: Run, name: str) -> None:
        """Store the target's remaining log lines (best effort: until it has none, or fails)."""
        with contextlib.suppress(TentacleError, TargetGone):
            machine = await self.machine_of(run.record.space, name, run.record.created_at)
            await self.sink.flush(run.task_id, name)
            since = await self.db.run(log_rows.last_machine_seq, run.task_id, name)
            more = True
            while more:
                params = StatusParams(task_id=run.task_id, log_since=since)
                status = await self.fleet.call(machine, TASK_STATUS, params, 10)
                lines = masked_rows(run.masker, status)
                await self.sink.put(run.task_id, name, lines)
                since, more = (max(since, lines[-1][0]) if lines else since), status.more and bool(lines)
            await self.sink.flush(run.task_id, name)


def replaced(machine: Machine) -> str:
    """Why a task does not go on with a machine registered anew under its target's name."""
    return (
        f"machine {machine.name!r} was replaced by a new registration (certificate {machine.thumbprint})"
        " after this task was created; its part of the task is not handed to the new machine"
    )
