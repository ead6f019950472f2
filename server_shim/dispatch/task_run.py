"""One running task: its coordinator, a driver per target, and the jobs that send its actions.

How it works. A driver sends ``task.start`` (idempotent), then long-polls ``task.status``.
Each answer's lines go to the `LogSink` (masked again here) and its finished gates to the
coordinator, in the order that keeps both promises: when the tentacle has more lines
waiting (a flood), failures and cancellations are reported at once and the lines after;
otherwise the lines are stored first, so a success never precedes its own output.
Every event's snapshot is saved before its actions are sent (`event`).

Nothing a target does can wedge the task: a driver or job that raises anything fails
that target with the reason (`failed`), an error of the server's own storage fails the
whole task with the reason (`TaskCoordinator.abort`), and a cancel ends the task after
`Host.cancel_timeout` seconds whatever its targets answer (`cancel_unconfirmed`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar, cast

from server_shim.dispatch import books
from server_shim.dispatch.log_sink import LogSink, masked_rows
from server_shim.dispatch.target_calls import TargetCalls, TargetGone
from server_shim.store import log_rows
from server_shim.store.database import Database
from server_shim.store.node_rows import LeaseLost
from server_shim.store.task_rows import TaskRecord
from tentacle.common.logs import event
from tentacle.errors import StorageError
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
from tentacle.protocol.plan import Plan
from tentacle.protocol.rpc_messages import (
    TASK_CANCEL,
    TASK_GATE,
    TASK_START,
    TASK_STATUS,
    UNKNOWN_TASK,
    Call,
    GateParams,
    StartParams,
    StatusParams,
    StatusResult,
    StopParams,
)
from tentacle.protocol.states import GateState
from tentacle.protocol.wire import Wire

log = logging.getLogger("server_shim.dispatch.task_run")
STATUS_WAIT = 20.0
CALL_TIMEOUT = 30.0
P = TypeVar("P", bound=Wire)
GateHook = Callable[[str, Plan, str], Awaitable[None]]  # (space, the target's plan, the gate's name)


class Host(Protocol):
    """What a run needs of the dispatcher that runs it."""

    db: Database
    sink: LogSink
    targets: TargetCalls
    gate_hooks: list[GateHook]
    cancel_timeout: float

    async def finished(self, run: TaskRun) -> None:
        """The task ended: drain, release its machines, start the next."""

    async def save(self, task_id: str, state: str, error: str | None, coordinator: dict[str, Any]) -> None:
        """Store a snapshot while this node owns the task."""

    def let_go(self, run: TaskRun | None = None) -> None:
        """Stop driving the task here: another node owns it."""


class TaskRun:
    """One running task: its coordinator, its drivers, its senders."""

    def __init__(self, host: Host, record: TaskRecord, coordinator: TaskCoordinator) -> None:
        self.host = host
        self.record = record
        self.coordinator = coordinator
        self.masker = Masker({v for plan in record.plans.values() for v in plan.sensitive_values()})
        self.lock = asyncio.Lock()
        self.finished = asyncio.Event()
        self.unsaved = False  # the latest state could not be stored (the dispatcher keeps trying)
        self.opened: dict[str, set[int]] = {name: set() for name in record.plans}
        # A gate must not reach a target before its task.start did: set by the driver.
        self.started: dict[str, asyncio.Event] = {name: asyncio.Event() for name in record.plans}
        # Set when a target is cancelled or the task ends: its gate hooks (pushes) stop.
        self.halted: dict[str, asyncio.Event] = {name: asyncio.Event() for name in record.plans}
        self.drivers: dict[str, asyncio.Task[None]] = {}
        self.jobs: set[asyncio.Task[None]] = set()
        self._deadline_set = False

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.record.task_id

    def launch(self, *, resume: bool) -> None:
        """Start (or resume) the coordinator and a driver per target."""
        self.spawn(self.event(lambda c: c.resume() if resume else c.start()))
        for name in self.record.plans:
            self.drivers[name] = asyncio.create_task(self.drive(name))

    def spawn(self, work: Coroutine[Any, Any, None], target: str | None = None) -> None:
        """Run a job of this task in the background; whatever it raises fails `target` (or the task)."""
        job = asyncio.create_task(self._guarded(work, target))
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    async def _guarded(self, work: Coroutine[Any, Any, None], target: str | None) -> None:
        try:
            await work
        except TargetGone as exc:
            if target is not None:
                await self.event(functools.partial(_lost, target, str(exc)))
        except Exception as exc:
            await self.failed(exc, target)

    async def failed(self, exc: Exception, target: str | None) -> None:
        """An error nobody expected: the server's storage fails the task, anything else the target."""
        if books.is_bookkeeping(exc) or target is None:
            ours = books.is_bookkeeping(exc)
            reason = books.storage_error(exc).message if ours else f"server error: {_describe(exc)}"
            event(log, "task.server_failed", logging.ERROR, task=self.task_id, reason=reason)
            await self.event(lambda c: c.abort(reason))
            return
        reason = f"the server failed while following it: {_describe(exc)}"
        log.error("task.target_error task=%s target=%s", self.task_id, target, exc_info=exc)
        await self.event(functools.partial(_lost, target, reason))

    async def event(self, fire: Callable[[TaskCoordinator], list[Action]]) -> None:
        """Feed one event to the coordinator, save its snapshot, then act.

        A snapshot that cannot be saved (after retries) ends the task with the reason:
        the server cannot promise what it cannot write down.
        """
        async with self.lock:
            if self.finished.is_set():
                return
            actions = fire(self.coordinator)
            if not actions:
                return
            try:
                await self.save()
            except LeaseLost as exc:  # another node took the task over: not one more action from here
                event(log, "task.lease_lost", logging.WARNING, task=self.task_id, reason=exc.message)
                self.host.let_go(self)
                return
            except StorageError as exc:
                self.unsaved = True
                event(log, "task.save_failed", logging.ERROR, task=self.task_id, reason=exc.message)
                actions = self.coordinator.abort(exc.message) or actions
            for action in actions:
                self._act(action)

    async def save(self) -> None:
        """Store the coordinator's snapshot and the task state it implies; raises `StorageError`,
        or `LeaseLost` when another node owns the task now."""
        state, error = self.coordinator.state, self.coordinator.error
        await self.host.save(self.task_id, state, error, self.coordinator.snapshot())

    def _act(self, action: Action) -> None:
        if isinstance(action, OpenGate):
            self.opened[action.machine].add(action.gate_index)
            params = GateParams(
                task_id=self.task_id, gate_index=action.gate_index, gate_name=action.gate_name
            )
            self.spawn(self.open_gate(action.machine, action.gate_name, params), action.machine)
            event(log, "gate.opened", task=self.task_id, target=action.machine, gate=action.gate_name)
        elif isinstance(action, CancelTarget):
            self.halted[action.machine].set()
            self.spawn(
                self.send(action.machine, TASK_CANCEL, StopParams(task_id=self.task_id)), action.machine
            )
            if not self._deadline_set:
                self._deadline_set = True
                self.spawn(self._cancel_deadline())
        elif isinstance(action, TaskFinished):
            self.finished.set()
            for halted in self.halted.values():
                halted.set()
            event(log, f"task.{action.state}", task=self.task_id, error=action.error or "")
            self.spawn(self.host.finished(self))

    async def _cancel_deadline(self) -> None:
        """A cancel ends the task in bounded time: targets that did not confirm read so."""
        await asyncio.sleep(self.host.cancel_timeout)
        await self.event(lambda c: c.cancel_unconfirmed())

    async def open_gate(self, name: str, gate_name: str, params: GateParams) -> None:
        """Run the gate hooks for this target (pushing its packages, say), then send the gate.

        A hook that fails is logged and passed over: what it prepares, the tentacle can
        still get by itself (a package it was not pushed, it fetches from the feed).
        A target that broke a limit of the protocol there fails (`TargetGone`), as does one
        replaced since the task began: it gets none of the task's packages either.
        """
        await self.started[name].wait()
        await self.host.targets.machine_of(self.record.space, name, self.record.created_at)
        for hook in self.host.gate_hooks:
            try:
                await unless_halted(
                    self.halted[name], hook(self.record.space, self.record.plans[name], gate_name)
                )
            except TargetGone:
                raise
            except Exception as exc:
                event(
                    log, "gate.hook_failed", logging.WARNING, task=self.task_id, target=name, reason=str(exc)
                )
        await self.send(name, TASK_GATE, params)

    async def send(self, name: str, call: Call[P, Any], params: P) -> None:
        """Deliver one idempotent call, retrying until it lands or the target is gone."""
        try:
            await self.started[name].wait()
            await self.host.targets.call_until(self, name, call, params, timeout=CALL_TIMEOUT)
        except TargetGone as exc:
            await self.event(functools.partial(_lost, name, str(exc)))

    async def drive(self, name: str) -> None:
        """Follow one target until the task ends; whatever goes wrong ends its part, with the reason."""
        try:
            await self._follow(name)
        except TargetGone as exc:
            await self.event(functools.partial(_lost, name, str(exc)))
        except Exception as exc:
            await self.failed(exc, name)

    async def _follow(self, name: str) -> None:
        """Start the target, then relay its log and gate results."""
        start = StartParams(plan=self.record.plans[name])
        since = await books.write(self.host.db, log_rows.last_machine_seq, self.task_id, name)
        version, started = 0, False
        while not self.finished.is_set():
            if not started:
                await self.host.targets.call_until(self, name, TASK_START, start, timeout=CALL_TIMEOUT)
                started = True
                self.started[name].set()
            params = StatusParams(task_id=self.task_id, log_since=since, version=version, wait=STATUS_WAIT)
            status = await self.host.targets.call_until(
                self, name, TASK_STATUS, params, timeout=STATUS_WAIT + 15
            )
            since = await self.relay(name, status, since)
            version = status.version
            if status.state == UNKNOWN_TASK:
                if self.opened[name]:
                    raise TargetGone("the tentacle has no record of this task (its state was lost)")
                started = False

    async def relay(self, name: str, status: StatusResult, since: int) -> int:
        """Hand one answer's lines and gate results on; returns the last line number read."""
        lines = masked_rows(self.masker, status)
        if status.more:  # lines are waiting on the tentacle: what stops things goes first
            await self._report_gates(name, status, ends_only=True)
            await self.host.sink.put(self.task_id, name, lines)
        else:
            await self.host.sink.put(self.task_id, name, lines)
            await self.host.sink.flush(self.task_id, name)
            await self._report_gates(name, status)
        return max(since, lines[-1][0]) if lines else since

    async def _report_gates(self, name: str, status: StatusResult, *, ends_only: bool = False) -> None:
        """Feed each gate that ended to the coordinator (repeats are ignored); ``ends_only``: no successes."""
        for gate in status.gates:
            if gate.state is GateState.RUNNING or (ends_only and gate.state is GateState.SUCCESS):
                continue
            outcome = cast(GateOutcome, gate.state.value if gate.state in OUTCOMES else "failed")
            reason = self.masker.mask(gate.reason or gate.state.value)
            await self.event(functools.partial(_finished, name, gate.index, outcome, reason))


def _finished(name: str, index: int, outcome: GateOutcome, reason: str, c: TaskCoordinator) -> list[Action]:
    return c.target_finished(name, index, outcome, reason)


def _lost(name: str, reason: str, c: TaskCoordinator) -> list[Action]:
    return c.target_lost(name, reason)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def unless_halted(halted: asyncio.Event, work: Awaitable[None]) -> None:
    """Run `work`, stopping it if ``halted`` is set first (the target cancelled, the task ended)."""
    job = asyncio.ensure_future(work)
    ended = asyncio.ensure_future(halted.wait())
    try:
        await asyncio.wait({job, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (job, ended):
            waiting.cancel()
        await asyncio.gather(job, ended, return_exceptions=True)
    if not job.cancelled() and job.exception() is not None:
        raise cast(BaseException, job.exception())
