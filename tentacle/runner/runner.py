"""The tentacle's task runner: runs the plans the server sends, one task at a time, gate by gate.

How it works::

    task.start ──▶ queued ──takes the slot──▶ running ──▶ done   every gate it has work in
                     │                          │                succeeded, or one failed or
                     │                          │                is unknown, or task.finish
                     └──────── task.cancel ─────┴──▶ cancelled   (a running script first
                                                                 gets SIGTERM, then SIGKILL)

    gate: pending ──its task holds the slot and runs no other gate──▶ running
                  ──▶ success | failed | unknown | cancelled

The slot goes to the earliest queued task (arrival order, kept across restarts). The
server opens gates with task.gate; a task's gates run one at a time in the order they
came, as asyncio tasks the runner owns, so every handler answers at once. A pending gate
(its task is queued) is remembered on disk and not shown until it starts.

Durability (see tentacle.runner.task_store): every change is saved before the handler answers,
and a step's start is saved before its script spawns. After a crash, a gate that reads
``running`` was interrupted: it becomes ``unknown``, is never run again, and its task is
done. Long polls (task.status) wake on any state change (the task's ``version``) or log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from tentacle.agent.rpc import Service
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.coordinator import ACQUISITION, PRE_ACQUISITION
from tentacle.protocol.masking import Masker
from tentacle.protocol.plan import Plan, PlanError, PlannedPackage, PlannedStep, script_environment
from tentacle.runner.scripts import ScriptError, ScriptResult, ScriptSpec, run_script
from tentacle.runner.task_store import (
    GateRecord,
    GateState,
    LogLine,
    StateWriteError,
    Stop,
    TaskLog,
    TaskRecord,
    TaskState,
    TaskStore,
    encode,
    to_prune,
)

log = logging.getLogger("tentacle.runner.runner")

Acquire = Callable[[Plan, PlannedPackage], Awaitable[Path]]
Outcome = tuple[GateState, str]

MAX_WAIT: Final = 25.0
MAX_LOG_LINES: Final = 1000
MAX_LOG_TEXT: Final = 4 * 1024 * 1024  # keeps an answer well under the 16 MiB message limit
KEEP_ENDED: Final = 100
PARALLELISM: Final = 4
UNKNOWN_TASK: Final = "unknown-task"
STOPPED: Final = "tentacle stopped"
NOT_CONFIGURED: Final = "package acquisition is not configured on this tentacle"
NOTHING_TO_DO: Final = "nothing to do on this target"
RESUMED: Final = "tentacle restarted during acquisition: acquiring again (partial downloads resume)"
_STOP_REASONS: Final[Mapping[Stop, str]] = {
    "cancel": "cancelled by the server",
    "finish": "the server finished the task",
}
# The task id names folders: one plain path component, never "." or "..".
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_STEP_GATE = re.compile(r"^step:(0|[1-9][0-9]{0,5})$")
_T = TypeVar("_T")


class TaskRequestError(TentacleError):
    """A task request the runner cannot act on: a bad plan, gate or parameter."""


class UnknownTaskError(TaskRequestError):
    """The request names a task this tentacle does not know."""


class _StepFailed(Exception):
    """A step failed before or instead of its script; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class _Task:
    """A task's record and log plus what only lives in memory."""

    record: TaskRecord
    log: TaskLog
    masker: Masker
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    saving: asyncio.Lock = field(default_factory=asyncio.Lock)
    gate_job: asyncio.Task[None] | None = None
    stop_reason: str = ""

    def touch(self) -> None:
        """Record a state change: bump the version and wake the long polls."""
        self.record.version += 1
        self.wake()

    def wake(self) -> None:
        """Wake every long poll of this task (they re-check what they wait for)."""
        self.changed.set()
        self.changed = asyncio.Event()

    def next_pending(self) -> GateRecord | None:
        """The earliest accepted gate that has not started."""
        return next((g for g in self.record.gates.values() if g.state == "pending"), None)


class TaskRunner:
    """Runs plans one task at a time with their state under ``<state_dir>/tasks``.

    ``acquire(plan, package)`` returns the path of the verified package file; None means
    this tentacle cannot acquire packages. Construction loads every task from disk.
    """

    def __init__(
        self,
        state_dir: Path,
        acquire: Acquire | None = None,
        *,
        parallelism: int = PARALLELISM,
        keep: int = KEEP_ENDED,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        """Load the tasks under ``state_dir``; ``keep`` ended tasks are kept, the oldest go.

        ``on_end(task_id)`` is called once a task has ended (its packages may go, say).
        """
        self._store = TaskStore(state_dir)
        self._acquire = acquire
        self._on_end = on_end
        self._parallelism = parallelism
        self._keep = keep
        self._tasks: dict[str, _Task] = {}
        self._jobs: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._load()
        self._arrivals = max((t.record.arrival + 1 for t in self._tasks.values()), default=0)

    def register(self, service: Service) -> None:
        """Serve task.start, task.gate, task.status, task.cancel and task.finish."""
        service.register("task.start", self._handle_start)
        service.register("task.gate", self._handle_gate)
        service.register("task.status", self._handle_status)
        service.register("task.cancel", self._handle_cancel)
        service.register("task.finish", self._handle_finish)
        with contextlib.suppress(RuntimeError):  # no running loop: the first request kicks it
            asyncio.get_running_loop().call_soon(self._schedule)

    async def shutdown(self, grace: float) -> None:
        """Start nothing new; give running steps ``grace`` seconds, then cancel them."""
        self._stopping = True
        running = [(task, task.gate_job) for task in self._tasks.values() if task.gate_job is not None]
        if running:
            _, late = await asyncio.wait([job for _, job in running], timeout=grace)
            for task, job in running:
                if job in late and not task.cancel.is_set():
                    task.stop_reason = STOPPED
                    task.cancel.set()
        while self._jobs:
            await asyncio.wait(set(self._jobs))
        for task in self._tasks.values():
            task.log.close()

    # --- loading --------------------------------------------------------------------------

    def _load(self) -> None:
        """Read every task; interrupted gates become unknown; old ended tasks go."""
        for record in self._store.load_all():
            try:
                task_log = TaskLog.recover(
                    self._store.log_path(record.task_id), record.log_seq, record.log_bytes
                )
            except OSError as exc:
                event(log, "task.log_unreadable", logging.ERROR, task=record.task_id, reason=str(exc))
                continue
            task = _Task(record, task_log, Masker(record.plan.sensitive_values()))
            self._tasks[record.task_id] = task
            interrupted = any(gate.state == "running" for gate in record.gates.values())
            if interrupted and not self._resume_acquisition(task):
                self._mark_interrupted(task)
        self._one_holder()
        for task_id in self._forget_old():
            self._store.delete(task_id)

    def _resume_acquisition(self, task: _Task) -> bool:
        """The process died while acquiring: do it again (it is safe; partial downloads resume)."""
        record = task.record
        running = [gate for gate in record.gates.values() if gate.state == "running"]
        if record.stop is not None or len(running) != 1 or running[0].name != ACQUISITION:
            return False
        running[0].state = "pending"
        self._system(task, "", RESUMED)
        event(log, "task.acquisition_resumed", logging.WARNING, task=record.task_id)
        task.touch()
        self._save_now(task)
        return True

    def _mark_interrupted(self, task: _Task) -> None:
        """The process died during a gate: its result is unknown; the task is over."""
        record = task.record
        step = record.plan.step(record.current_step) if record.current_step is not None else None
        for gate in record.gates.values():
            if gate.state == "running":
                what = f"step '{step.name}'" if step is not None else f"gate '{gate.name}'"
                gate.state = "unknown"
                gate.reason = f"tentacle restarted while {what} was running; its result is unknown"
                self._system(task, step.name if step is not None else "", gate.reason)
                event(log, "task.interrupted", logging.WARNING, task=record.task_id, gate=gate.name)
        record.current_step = None
        self._end(task, "cancelled" if record.stop == "cancel" else "done")
        task.touch()
        self._save_now(task)

    def _one_holder(self) -> None:
        """Only the earliest running task holds the slot (a hand-edited state may say more)."""
        holders = [task for task in self._tasks.values() if task.record.state == "running"]
        for task in holders[1:]:
            task.record.state = "queued"
            task.touch()
            self._save_now(task)

    def _save_now(self, task: _Task) -> None:
        """Save while loading, before any event loop runs; a failure is logged."""
        try:
            self._store.save(task.record.task_id, self._encode(task))
        except StateWriteError as exc:
            event(log, "task.save_failed", logging.ERROR, task=task.record.task_id, reason=exc.message)

    # --- handlers -------------------------------------------------------------------------

    async def _handle_start(self, params: dict[str, Any]) -> dict[str, Any]:
        """task.start: accept a plan once; a repeat answers the current state."""
        plan = _read_plan(params)
        task = self._tasks.get(plan.task_id)
        if task is None:
            task = await self._create(plan)
        self._schedule()
        return {"taskId": plan.task_id, "state": task.record.state}

    async def _handle_gate(self, params: dict[str, Any]) -> dict[str, Any]:
        """task.gate: remember a gate once; it runs when its task may run it."""
        task = self._known(params)
        index = _integer(params, "gateIndex")
        name = _text(params, "gateName")
        has_work = _gate_has_work(task.record.plan, name)
        gate = task.record.gates.get(index)
        if gate is None:
            self._admit(task, GateRecord(index, name), has_work)
            await self._persist(task)
        elif gate.name != name:
            raise TaskRequestError(f"gate {index} is {gate.name!r}, not {name!r}")
        self._schedule()
        return {"taskId": task.record.task_id, "accepted": True}

    async def _handle_status(self, params: dict[str, Any]) -> dict[str, Any]:
        """task.status: a long poll for state changes and log lines."""
        task_id = _text(params, "taskId")
        since = _integer(params, "logSince", default=0)
        version = _integer(params, "version", default=0)
        wait = _seconds(params, "wait", MAX_WAIT)
        task = self._tasks.get(task_id)
        if task is None:
            return unknown_task_status(task_id)
        self._schedule()
        await _wait_for_news(task, since, version, wait)
        lines, more = await self._log_after(task, since)
        record = task.record
        gates = sorted((g for g in record.gates.values() if g.state != "pending"), key=lambda g: g.index)
        return {
            "taskId": task_id,
            "state": record.state,
            "version": record.version,
            "gates": [gate.to_json() for gate in gates],
            "log": [line.to_json() for line in lines],
            "more": more,
        }

    async def _handle_cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        """task.cancel: stop the task; a running script is terminated."""
        return await self._stop(_text(params, "taskId"), "cancel")

    async def _handle_finish(self, params: dict[str, Any]) -> dict[str, Any]:
        """task.finish: the task is over everywhere; release the slot, drop the work folder."""
        return await self._stop(_text(params, "taskId"), "finish")

    def planned_package(self, task_id: str, sha512: str) -> PlannedPackage | None:
        """The package with this SHA-512 in a running task's plan (what a push may deliver)."""
        task = self._tasks.get(task_id)
        if task is None or task.record.ended:
            return None
        return next((p for p in task.record.plan.packages() if p.sha512 == sha512), None)

    def _known(self, params: dict[str, Any]) -> _Task:
        """The task the request names, or `UnknownTaskError`."""
        task_id = _text(params, "taskId")
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTaskError(f"unknown task {task_id!r}")
        return task

    # --- state changes ----------------------------------------------------------------------

    async def _create(self, plan: Plan) -> _Task:
        """A new queued task, saved before it is acknowledged."""
        record = TaskRecord(plan=plan, arrival=self._arrivals)
        self._arrivals += 1
        task = _Task(record, TaskLog(self._store.log_path(plan.task_id)), Masker(plan.sensitive_values()))
        self._tasks[plan.task_id] = task  # before any await: a concurrent repeat finds it
        try:
            await asyncio.to_thread(self._store.create, plan.task_id)
            await self._persist(task)
        except StateWriteError:
            self._tasks.pop(plan.task_id, None)
            raise
        event(log, "task.accepted", task=plan.task_id, steps=len(plan.steps))
        return task

    def _admit(self, task: _Task, gate: GateRecord, has_work: bool) -> None:
        """Add a new gate: pending, or settled at once when it cannot or need not run."""
        record = task.record
        other = next((g for g in record.gates.values() if g.name == gate.name), None)
        if other is not None:
            raise TaskRequestError(f"gate {gate.name!r} was already opened as gate {other.index}")
        if record.state == "cancelled" or (record.ended and has_work):
            gate.state, gate.reason = _not_run(record)
        elif not has_work:
            gate.state, gate.reason = "success", NOTHING_TO_DO
        record.gates[gate.index] = gate
        task.touch()
        event(log, "gate.accepted", task=record.task_id, gate=gate.name, state=gate.state)

    async def _stop(self, task_id: str, kind: Stop) -> dict[str, Any]:
        """Cancel or finish a task; repeats change nothing."""
        task = self._tasks.get(task_id)
        if task is None:
            return {"taskId": task_id, "state": UNKNOWN_TASK}
        record = task.record
        changed = kind == "finish" and not record.finished
        record.finished = record.finished or kind == "finish"
        if not record.ended and record.stop is None:
            changed = True
            record.stop, task.stop_reason = kind, _STOP_REASONS[kind]
            if task.gate_job is not None:
                task.cancel.set()  # the gate ends the task once its script has stopped
            else:
                self._end(task, "cancelled" if kind == "cancel" else "done")
            event(log, f"task.{kind}", task=task_id)
        if changed:
            task.touch()
            await self._persist(task)
        await self._clean_if_finished(task)
        self._schedule()
        return {"taskId": task_id, "state": record.state}

    def _end(self, task: _Task, state: TaskState) -> None:
        """Release the slot for good; gates that never started will not run."""
        record = task.record
        record.state = state
        for gate in record.gates.values():
            if gate.state == "pending":
                gate.state, gate.reason = _not_run(record)
        task.log.close()
        event(log, "task.ended", task=record.task_id, state=state)
        if self._on_end is not None:
            self._on_end(record.task_id)

    def _after_gate(self, task: _Task, gate: GateRecord) -> None:
        """End the task when a gate failed, it was stopped, or all its own work is done."""
        record = task.record
        if record.stop == "cancel":
            self._end(task, "cancelled")
        elif record.stop == "finish" or gate.state != "success" or _complete(record):
            self._end(task, "done")

    def _schedule(self) -> None:
        """Give a free slot to the earliest queued task and start its next pending gate."""
        if self._stopping:
            return
        for task_id in self._forget_old():
            self._spawn(asyncio.to_thread(self._store.delete, task_id))
        holder = next((t for t in self._tasks.values() if t.record.state == "running"), None)
        while holder is None or (holder.gate_job is None and _complete(holder.record)):
            if holder is not None:  # a plan with no work in any gate
                self._end(holder, "done")
                self._changed_soon(holder)
            holder = next((t for t in self._tasks.values() if t.record.state == "queued"), None)
            if holder is None:
                return
            holder.record.state = "running"
            self._changed_soon(holder)
            event(log, "task.running", task=holder.record.task_id)
        gate = holder.next_pending() if holder.gate_job is None else None
        if gate is not None:
            holder.gate_job = self._spawn(self._run_gate(holder, gate))

    def _forget_old(self) -> list[str]:
        """Drop the ended tasks beyond the newest `keep` from memory; returns their ids."""
        records = [t.record for t in self._tasks.values() if t.gate_job is None]
        old = [record.task_id for record in to_prune(records, self._keep)]
        for task_id in old:
            self._tasks.pop(task_id).log.close()
            event(log, "task.forgotten", task=task_id)
        return old

    # --- persistence ------------------------------------------------------------------------

    def _encode(self, task: _Task) -> bytes:
        """task.json's bytes, with the log's current position."""
        task.record.log_seq, task.record.log_bytes = task.log.next_seq, task.log.size
        return encode(task.record)

    async def _persist(self, task: _Task) -> None:
        """Save the task now; saves of one task never overtake each other."""
        async with task.saving:
            data = self._encode(task)  # taken under the lock: the last save has the last state
            await asyncio.to_thread(self._store.save, task.record.task_id, data)

    async def _persist_logged(self, task: _Task) -> None:
        """Save the task; a failure is logged (the state stays in memory)."""
        try:
            await self._persist(task)
        except StateWriteError as exc:
            event(log, "task.save_failed", logging.ERROR, task=task.record.task_id, reason=exc.message)

    def _changed_soon(self, task: _Task) -> None:
        """A state change made where nothing can wait for the save."""
        task.touch()
        self._spawn(self._persist_logged(task))

    async def _clean_if_finished(self, task: _Task) -> None:
        """Remove the work folder of a task that ended and that the server finished."""
        if task.record.ended and task.record.finished and task.gate_job is None:
            await asyncio.to_thread(self._store.remove_work_dir, task.record.task_id)

    def _spawn(self, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run ``work`` as a job the runner owns (shutdown waits for it)."""
        job = asyncio.get_running_loop().create_task(work)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    # --- log ----------------------------------------------------------------------------

    def _emit(self, task: _Task, stream: str, step: str, text: str) -> None:
        """Append a line (on disk first) and wake the long polls."""
        # A buffered append of one line is cheap enough to do on the loop, and it keeps
        # the numbering in the order the lines arrived.
        if task.log.append(time.time(), stream, step, text) is not None:
            task.wake()

    def _system(self, task: _Task, step: str, text: str) -> None:
        """A line the runner itself writes, masked like script output."""
        self._emit(task, "system", task.masker.mask(step), task.masker.mask(text))

    async def _log_after(self, task: _Task, since: int) -> tuple[list[LogLine], bool]:
        """Lines after ``since``: from memory when recent, else from the file in a thread."""
        found = task.log.recent_after(since, MAX_LOG_LINES, MAX_LOG_TEXT)
        if found is None:
            found = await asyncio.to_thread(task.log.read_after, since, MAX_LOG_LINES, MAX_LOG_TEXT)
        return found

    # --- gates --------------------------------------------------------------------------

    async def _run_gate(self, task: _Task, gate: GateRecord) -> None:
        """Run one gate to its end, record the outcome, and let the next thing start."""
        try:
            gate.state = "running"
            task.touch()
            await self._persist(task)
            event(log, "gate.started", task=task.record.task_id, gate=gate.name)
            gate.state, gate.reason = await self._gate_work(task, gate)
        except Exception as exc:
            # A bug or an unwritable state folder must not leave the gate running forever.
            log.exception("gate.crashed task=%s gate=%s", task.record.task_id, gate.name)
            gate.state, gate.reason = "failed", _describe(exc)
        event(log, "gate.finished", task=task.record.task_id, gate=gate.name, state=gate.state)
        task.record.current_step = None
        self._after_gate(task, gate)
        task.touch()
        task.gate_job = None
        await self._persist_logged(task)
        await self._clean_if_finished(task)
        self._schedule()

    async def _gate_work(self, task: _Task, gate: GateRecord) -> Outcome:
        """What the gate does on this target."""
        plan = task.record.plan
        if gate.name == PRE_ACQUISITION:
            return await self._run_steps(task, plan.pre_acquisition_steps())
        if gate.name == ACQUISITION:
            return await self._acquire_packages(task)
        step = plan.step(_step_index(gate.name))
        return await self._run_steps(task, () if step is None else (step,))

    def _stopped(self, task: _Task) -> Outcome | None:
        """Why nothing more may start in this task, or None."""
        if task.cancel.is_set():
            return "cancelled", task.stop_reason or STOPPED
        if self._stopping:
            return "cancelled", STOPPED
        return None

    async def _run_steps(self, task: _Task, steps: Sequence[PlannedStep]) -> Outcome:
        """Run steps in order until one does not succeed."""
        outcome: Outcome = ("success", NOTHING_TO_DO)
        for step in steps:
            outcome = self._stopped(task) or await self._run_step(task, step)
            state, reason = outcome
            if state == "cancelled":
                return state, task.stop_reason or STOPPED
            if state != "success":
                return state, reason if len(steps) == 1 else f"step '{step.name}': {reason}"
        return outcome if len(steps) <= 1 else ("success", f"{len(steps)} steps succeeded")

    async def _run_step(self, task: _Task, step: PlannedStep) -> Outcome:
        """One step, framed by system lines."""
        task.record.current_step = step.index
        task.touch()
        await self._persist(task)  # on disk before anything runs: after a crash it reads "unknown"
        event(log, "step.started", task=task.record.task_id, step=step.name)
        self._system(task, step.name, f"step '{step.name}' started")
        state, reason = await self._step_work(task, step)
        self._system(task, step.name, f"step '{step.name}' finished: {reason}")
        event(log, "step.finished", task=task.record.task_id, step=step.name, state=state)
        return state, reason

    async def _step_work(self, task: _Task, step: PlannedStep) -> Outcome:
        """Extract the step's package, then run its script."""
        plan = task.record.plan
        try:
            workdir = await asyncio.to_thread(self._store.make_work_dir, plan.task_id)
        except OSError as exc:
            return "failed", f"cannot create the work folder: {exc}"
        try:
            package_dir = None if step.package is None else await self._extract(task, step, workdir)
            if step.script is None:
                return "success", "package extracted"
            env = script_environment(plan, step, package_dir)
            spec = ScriptSpec(step.script.syntax, step.script.body, env, workdir, step.timeout_seconds)
            result = await run_script(spec, self._script_output(task, step), task.masker, task.cancel)
        except _StepFailed as exc:
            return "failed", exc.reason
        except ScriptError as exc:
            return "failed", exc.message
        return _script_outcome(result)

    def _script_output(self, task: _Task, step: PlannedStep) -> Callable[[str, str], None]:
        """The on_line callback of a step's script (run_script has masked the line)."""
        label = task.masker.mask(step.name)  # a step name may quote a secret too
        return lambda stream, text: self._emit(task, stream, label, text)

    async def _extract(self, task: _Task, step: PlannedStep, workdir: Path) -> str:
        """Extract the step's acquired package into ``<work>/<index>-package``."""
        package = step.package
        assert package is not None  # the caller checked
        source = task.record.packages.get(package_key(package))
        if source is None:
            raise _StepFailed(f"package {package.id} {package.version} was not acquired on this tentacle")
        dest = workdir / f"{step.index}-package"
        problem = await asyncio.to_thread(_unpack, Path(source), dest, package.file_name)
        if problem is not None:
            raise _StepFailed(f"cannot extract package {package.id} {package.version}: {problem}")
        return str(dest)

    # --- acquisition ------------------------------------------------------------------------

    async def _acquire_packages(self, task: _Task) -> Outcome:
        """Acquire every package of the plan; cancellation stops the downloads."""
        packages = task.record.plan.packages()
        if not packages:
            return "success", NOTHING_TO_DO
        if self._acquire is None:
            self._system(task, "", NOT_CONFIGURED)
            return "failed", NOT_CONFIGURED
        outcome = await _unless_set(task.cancel, self._acquire_all(task, packages, self._acquire))
        return outcome if outcome is not None else ("cancelled", task.stop_reason or STOPPED)

    async def _acquire_all(
        self, task: _Task, packages: Sequence[PlannedPackage], acquire: Acquire
    ) -> Outcome:
        """At most `parallelism` acquisitions at once; the first failure stops the others."""
        limit = asyncio.Semaphore(self._parallelism)
        jobs = [asyncio.ensure_future(self._acquire_one(task, p, acquire, limit)) for p in packages]
        try:
            await asyncio.wait(jobs, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for job in jobs:
                job.cancel()  # after a failure (or our own cancellation) the rest is not needed
            await asyncio.wait(jobs)
        for package, job in zip(packages, jobs, strict=True):
            error = None if job.cancelled() else job.exception()
            if error is not None:
                return "failed", f"package {package.id} {package.version}: {_describe(error)}"
        for package, job in zip(packages, jobs, strict=True):
            task.record.packages[package_key(package)] = str(job.result())
        return "success", f"{len(packages)} package(s) acquired"

    async def _acquire_one(
        self, task: _Task, package: PlannedPackage, acquire: Acquire, limit: asyncio.Semaphore
    ) -> Path:
        """One package, within the parallelism limit."""
        async with limit:
            name = f"{package.id} {package.version}"
            self._system(task, "", f"acquiring package {name}")
            path = await acquire(task.record.plan, package)
            self._system(task, "", f"package {name} acquired")
            return path


# --- pure helpers -------------------------------------------------------------------------


def unknown_task_status(task_id: str) -> dict[str, Any]:
    """The task.status answer for a task this tentacle has no record of."""
    return {"taskId": task_id, "state": UNKNOWN_TASK, "version": 0, "gates": [], "log": [], "more": False}


def package_key(package: PlannedPackage) -> str:
    """How task.json names an acquired package."""
    return f"{package.id}/{package.version}"


def _unpack(source: Path, dest: Path, file_name: str) -> str | None:
    """Extract an archive (in a worker thread); why it was refused, or None."""
    # Imported here: zip, tar and lzma weigh a megabyte that an idle tentacle never uses.
    from tentacle.packages.archives import ArchiveError
    from tentacle.packages.extraction import DestinationError, extract

    try:
        extract(source, dest, name=file_name)
    except (ArchiveError, DestinationError) as exc:
        return exc.message
    return None


def _work_gates(plan: Plan) -> set[str]:
    """The gates this plan has work in."""
    gates = {f"step:{step.index}" for step in plan.deployment_steps()}
    if plan.pre_acquisition_steps():
        gates.add(PRE_ACQUISITION)
    if plan.packages():
        gates.add(ACQUISITION)
    return gates


def _complete(record: TaskRecord) -> bool:
    """Whether every gate the plan has work in succeeded."""
    passed = {gate.name for gate in record.gates.values() if gate.state == "success"}
    return _work_gates(record.plan) <= passed


def _gate_has_work(plan: Plan, name: str) -> bool:
    """Whether this target has work in gate ``name``; raises for a malformed name."""
    if name not in (PRE_ACQUISITION, ACQUISITION):
        step = plan.step(_step_index(name))
        if step is not None and step.phase != "deployment":
            raise TaskRequestError(f"gateName: step {step.index} runs in the {step.phase} gate")
    return name in _work_gates(plan)


def _step_index(name: str) -> int:
    """The index in a ``step:<index>`` gate name."""
    match = _STEP_GATE.match(name)
    if match is None:
        raise TaskRequestError(f"gateName: {name!r} is not preAcquisition, acquisition or step:<index>")
    return int(match.group(1))


def _not_run(record: TaskRecord) -> Outcome:
    """The state of a gate that will never run because its task ended."""
    if record.state == "cancelled":
        return "cancelled", "not run: the task was cancelled"
    if record.stop == "finish":
        return "cancelled", "not run: the server finished the task"
    return "failed", "not run: the task had already ended"


def _script_outcome(result: ScriptResult) -> Outcome:
    """A gate state from a script's result (a timeout is a failure)."""
    if result.outcome in ("success", "cancelled"):
        return "success" if result.outcome == "success" else "cancelled", result.reason
    return "failed", result.reason


def _describe(error: BaseException) -> str:
    """A short text for an error: our own messages as they are, others with their type."""
    if isinstance(error, TentacleError):
        return error.message
    return f"{type(error).__name__}: {error}"


async def _wait_for_news(task: _Task, since: int, version: int, wait: float) -> None:
    """Return when the task's version passed ``version`` or a line after ``since`` exists."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        changed = task.changed  # taken before the check, so no wake-up falls in between
        if task.record.version > version or task.log.next_seq - 1 > since:
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await changed.wait()


async def _unless_set(stop: asyncio.Event, work: Coroutine[Any, Any, _T]) -> _T | None:
    """Await ``work``, or cancel it and return None as soon as ``stop`` is set."""
    job = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        job.cancel()
        raise
    finally:
        stopper.cancel()
    if job.done():
        return job.result()
    job.cancel()
    await asyncio.wait({job})
    return None


# --- request parameters ---------------------------------------------------------------------


def _read_plan(params: Mapping[str, Any]) -> Plan:
    """The plan of task.start, validated, with a task id that is safe as a folder name."""
    try:
        plan = Plan.from_json(params.get("plan"))
    except PlanError as exc:
        raise TaskRequestError(f"plan: {exc.message}", details=exc.details) from exc
    if not _TASK_ID.match(plan.task_id):
        raise TaskRequestError(
            "plan.taskId: must be 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return plan


def _text(params: Mapping[str, Any], key: str) -> str:
    """A required non-empty string parameter."""
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise TaskRequestError(f"{key}: must be a non-empty string")
    return value


def _integer(params: Mapping[str, Any], key: str, default: int | None = None) -> int:
    """A non-negative integer parameter (required unless it has a default)."""
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TaskRequestError(f"{key}: must be an integer >= 0")
    return value


def _seconds(params: Mapping[str, Any], key: str, high: float) -> float:
    """A number of seconds from 0 to ``high`` (0 when absent)."""
    value = params.get(key, 0)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= high:
        raise TaskRequestError(f"{key}: must be a number of seconds from 0 to {high:g}")
    return float(value)
