"""The tentacle's task runner: runs the plans the server sends, one task at a time, gate by gate.

How it works::

    RPC handler ──params struct──▶ event ──▶ RunnerMachine ──actions──▶ _execute
    (typed: rpc_messages)                    (pure rules:            Save, RunGate,
                                              slot, queue, gates)    StopGate, Emit, ...
    Job (one per task: record, log, masker, cancel) ◀── actions carried out ──┘
    GateWork (runs a gate as an asyncio task) ──outcome──▶ RunnerMachine.gate_done

The rules (one task at a time, the queue in arrival order, gate states, what a restart
makes of a gate that was running) are `tentacle.protocol.runner_machine`'s, drawn in
its docstring; this module holds the machine and the jobs, and does the I/O. Every
handler answers at once: a gate runs as an asyncio task the runner owns. Long polls
(task.status) wake on any state change (the task's ``version``) or log line.

Durability (see tentacle.runner.task_store and tentacle.runner.job): every change a
handler makes is saved before it answers, and a step's start is saved before its
script spawns. After a crash, a gate that reads ``running`` was interrupted: it becomes
``unknown``, is never run again, and its task has failed (an interrupted acquisition is
safely acquired again instead).

The handlers are typed (`tentacle.agent.rpc.Service.serve`): params arrive as the
structs of `tentacle.protocol.rpc_messages`, already checked (task.start's plan too),
and the answers are its result structs. A task this tentacle does not know answers
``unknown-task`` in task.status, task.cancel and task.finish; task.gate refuses it
(`UnknownTaskError`).

Nothing here blocks the event loop: `start` loads every task from disk in the state
writer thread (tentacle.runner.state_writer), which also does every save and log write.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from tentacle.agent.rpc import Service
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.packages.leftovers import sweep_work
from tentacle.protocol.plan import Plan, PlannedPackage
from tentacle.protocol.rpc_messages import (
    TASK_CANCEL,
    TASK_FINISH,
    TASK_GATE,
    TASK_START,
    TASK_STATUS,
    UNKNOWN_TASK,
    GateParams,
    GateResult,
    StartParams,
    StartResult,
    StatusParams,
    StatusResult,
    StopParams,
    StopResult,
    reported,
    unknown_task_status,
)
from tentacle.protocol.runner_machine import (
    KEEP_ENDED,
    Action,
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
    check_gate_name,
    work_gates,
)
from tentacle.runner.gate_work import NOT_CONFIGURED, PARALLELISM, STOPPED, Acquire, GateWork
from tentacle.runner.job import Job
from tentacle.runner.state_writer import StateWriter
from tentacle.runner.task_log import MAX_BYTES as LOG_MAX_BYTES
from tentacle.runner.task_log import TaskLog
from tentacle.runner.task_store import TaskRecord, TaskStore

__all__ = [
    "NOT_CONFIGURED",
    "STOPPED",
    "Acquire",
    "TaskRequestError",
    "TaskRunner",
    "UnknownTaskError",
]

log = logging.getLogger("tentacle.runner.runner")


class TaskRequestError(TentacleError):
    """A task request the runner cannot act on: a gate that contradicts the task's."""


class UnknownTaskError(TaskRequestError):
    """The request names a task this tentacle does not know."""


class TaskRunner:
    """Runs plans one task at a time with their state under ``<state_dir>/tasks``.

    ``acquire(plan, package)`` returns the path of the verified package file; None means
    this tentacle cannot acquire packages. Construction reads nothing: `start` (or the
    first request) loads every task from disk, off the event loop.
    """

    def __init__(
        self,
        state_dir: Path,
        acquire: Acquire | None = None,
        *,
        parallelism: int = PARALLELISM,
        keep: int = KEEP_ENDED,
        on_end: Callable[[str], None] | None = None,
        log_limit_bytes: int = LOG_MAX_BYTES,
    ) -> None:
        """``keep`` ended tasks are kept (older ones go); ``on_end(task_id)``: a task ended;
        ``log_limit_bytes``: the cap of each task's log.jsonl (output beyond is counted, not kept)."""
        self._store = TaskStore(state_dir)
        self._log_limit_bytes = log_limit_bytes
        self._writer = StateWriter()
        self._machine = RunnerMachine(keep)
        self._jobs: dict[str, Job] = {}
        self._work = GateWork(self._store, acquire, parallelism, lambda: self._machine.stopping)
        self._on_end = on_end or _nothing
        self._background: set[asyncio.Task[Any]] = set()
        self._loading: asyncio.Task[None] | None = None

    def register(self, service: Service) -> None:
        """Serve task.start, task.gate, task.status, task.cancel and task.finish."""
        service.serve(TASK_START, self._handle_start)
        service.serve(TASK_GATE, self._handle_gate)
        service.serve(TASK_STATUS, self._handle_status)
        service.serve(TASK_CANCEL, functools.partial(self._stop, self._machine.cancel))
        service.serve(TASK_FINISH, functools.partial(self._stop, self._machine.finish))

    async def start(self) -> None:
        """Load every task from disk and run what may run (once; later calls wait for it)."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._loading)

    async def shutdown(self, grace: float) -> None:
        """Start nothing new; give running steps ``grace`` seconds, then cancel them."""
        self._machine.shutdown()
        if self._loading is not None:
            await asyncio.wait({self._loading})
        await _stop_gates(list(self._jobs.values()), grace)
        while self._background:
            await asyncio.wait(set(self._background))
        for job in list(self._jobs.values()):  # a handler may add one meanwhile
            await job.log.settled()
            job.close()
        await self._writer.drain()

    def planned_package(self, task_id: str, sha512: str) -> PlannedPackage | None:
        """The package with this SHA-512 in a running task's plan (what a push may deliver)."""
        job = self._jobs.get(task_id)
        if job is None or job.entry.ended:
            return None
        return next((p for p in job.plan.packages() if p.sha512 == sha512), None)

    # --- loading --------------------------------------------------------------------------

    async def _load(self) -> None:
        """Read every task in the writer thread, then let the machine settle what a restart left."""
        found: list[Loaded] = []
        for record, log_file in await self._writer.run(_read_tasks, self._store, self._log_limit_bytes):
            self._jobs[record.task_id] = Job(record, log_file, self._store, self._writer)
            step = None if record.current_step is None else record.plan.step(record.current_step)
            found.append(Loaded(record.entry, None if step is None else step.name))
            record.current_step = None  # no step runs now; one that did is settled as unknown
        await self._apply(self._machine.loaded(found), strict=False)

    # --- handlers -------------------------------------------------------------------------

    async def _handle_start(self, params: StartParams) -> StartResult:
        """task.start: accept a plan once; a repeat answers the current state."""
        plan = params.plan
        await self.start()
        job = self._jobs.get(plan.task_id)
        if job is None:
            job = await self._create(plan)
        await job.saved()
        return StartResult(task_id=plan.task_id, state=job.entry.state)

    async def _handle_gate(self, request: GateParams) -> GateResult:
        """task.gate: remember a gate once; it runs when its task may run it."""
        await self.start()
        job = self._jobs.get(request.task_id)
        if job is None:
            raise UnknownTaskError(f"unknown task {request.task_id!r}")
        try:
            check_gate_name(job.plan, request.gate_name)
            actions = self._machine.gate(request.task_id, request.gate_index, request.gate_name)
        except GateRefused as exc:
            raise TaskRequestError(str(exc)) from exc
        await self._apply(actions)
        await job.saved()
        return GateResult(task_id=request.task_id, accepted=True)

    async def _handle_status(self, request: StatusParams) -> StatusResult:
        """task.status: a long poll for state changes and log lines."""
        await self.start()
        job = self._jobs.get(request.task_id)
        if job is None:
            return unknown_task_status(request.task_id)
        return await job.status(request.log_since, request.version, request.wait)

    async def _stop(self, stop: Callable[[str], list[Action]], params: StopParams) -> StopResult:
        """task.cancel (a running script is terminated) or task.finish (the task is over
        everywhere: the slot is released, the work folder goes); repeats change nothing."""
        task_id = params.task_id
        await self.start()
        job = self._jobs.get(task_id)
        if job is None:
            return StopResult(task_id=task_id, state=UNKNOWN_TASK)
        await self._apply(stop(task_id))
        await job.saved()
        return StopResult(task_id=task_id, state=reported(job.entry.state))

    async def _create(self, plan: Plan) -> Job:
        """A new task, its folder made and its record saved before it is acknowledged."""
        actions = self._machine.start(plan.task_id, work_gates(plan))
        entry = self._machine.task(plan.task_id)
        assert entry is not None  # the machine has just added it
        log_file = TaskLog(self._store.log_path(plan.task_id), max_bytes=self._log_limit_bytes)
        job = Job(TaskRecord(plan, entry), log_file, self._store, self._writer)
        self._jobs[plan.task_id] = job  # before any await: a concurrent repeat finds it
        folder = self._writer.submit(self._store.create, plan.task_id)  # before the first save
        error = _first_error(await asyncio.gather(folder, self._apply(actions), return_exceptions=True))
        if error is not None:
            self._jobs.pop(plan.task_id, None)
            await self._apply(self._machine.discard(plan.task_id), strict=False)
            raise error
        return job

    # --- actions --------------------------------------------------------------------------

    async def _apply(self, actions: Sequence[Action], *, strict: bool = True) -> None:
        """Carry out ``actions`` and wait for their saves; ``strict``: a failed save raises."""
        error = _first_error(await asyncio.gather(*self._execute(actions), return_exceptions=True))
        if strict and error is not None:
            raise error  # logged where it happened (Job._saved)

    def _execute(self, actions: Sequence[Action]) -> list[Awaitable[None]]:
        """Carry out each action in order; returns what a caller may wait for."""
        waits: list[Awaitable[None]] = []
        for action in actions:
            match action:
                case Save(task_id):
                    waits.append(self._jobs[task_id].changed())
                case RunGate(task_id, index):
                    job = self._jobs[task_id]
                    job.gate_job = self._spawn(self._drive_gate(job, index))
                case StopGate(task_id, reason):
                    self._jobs[task_id].stop(reason)
                case Emit(task_id, step, text):
                    self._jobs[task_id].system(step, text)
                case TaskEnded(task_id, state):
                    self._jobs[task_id].close()
                    event(log, "task.ended", task=task_id, state=state)
                    self._on_end(task_id)  # its packages may go
                case RemoveWork(task_id):
                    waits.append(self._spawn(asyncio.to_thread(self._store.remove_work_dir, task_id)))
                case Forget(task_id):
                    self._forget(task_id)
                case Note(name, task_id, detail, warning):
                    level = logging.WARNING if warning else logging.INFO
                    event(log, name, level, task=task_id, **dict(detail))
        return waits

    async def _drive_gate(self, job: Job, index: int) -> None:
        """Run a gate, then tell the machine its outcome and carry out what follows."""
        state, reason = await self._work.run(job, job.entry.gates[index])
        job.gate_job = None
        await self._apply(self._machine.gate_done(job.task_id, index, state, reason), strict=False)

    def _forget(self, task_id: str) -> None:
        """Drop an old ended task from memory, then from disk."""
        self._jobs.pop(task_id).close()
        self._writer.submit(self._store.delete, task_id)  # after the task's last save
        self._spawn(asyncio.to_thread(self._store.remove_work_dir, task_id))
        event(log, "task.forgotten", task=task_id)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a job the runner owns (shutdown waits for it)."""
        job = asyncio.get_running_loop().create_task(work)
        self._background.add(job)
        job.add_done_callback(self._background.discard)
        return job


def _read_tasks(store: TaskStore, max_bytes: int) -> list[tuple[TaskRecord, TaskLog]]:
    """Every readable task and its recovered log (blocking: the runner calls it in its writer thread).

    What interrupted extractions and steps left in the work folders goes first: nothing runs yet.
    """
    sweep_work(store.work_root)
    found = []
    for record in store.load_all():
        path = store.log_path(record.task_id)
        try:
            log_file = TaskLog.recover(path, record.log_seq, record.log_bytes, max_bytes=max_bytes)
            found.append((record, log_file))
        except OSError as exc:
            event(log, "task.log_unreadable", logging.ERROR, task=record.task_id, reason=str(exc))
    return found


async def _stop_gates(jobs: Sequence[Job], grace: float) -> None:
    """Give the running gates of ``jobs`` ``grace`` seconds to end, then stop them."""
    running = [(job, job.gate_job) for job in jobs if job.gate_job is not None]
    if running:
        _, late = await asyncio.wait([gate_job for _, gate_job in running], timeout=grace)
        for job, gate_job in running:
            if gate_job in late:
                job.stop(STOPPED)


def _first_error(results: Sequence[object]) -> BaseException | None:
    """The first exception among `asyncio.gather(..., return_exceptions=True)`'s results."""
    return next((result for result in results if isinstance(result, BaseException)), None)


def _nothing(task_id: str) -> None:
    """The default ``on_end``: nothing to release."""
