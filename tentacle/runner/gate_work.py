"""What a gate does on this target: run its steps' scripts, or acquire the plan's packages.

How it works::

    run(job, gate)   wait until the gate's running state is saved (never run what a crash
                     could not report as unknown), then:
      preAcquisition   the plan's pre-acquisition steps, in order, until one does not succeed
      acquisition      every package of the plan, `parallelism` at a time; the first
                       failure stops the others; cancellation stops the downloads
      step:<index>     that step: save it as the current step (before its script spawns),
                       extract its package into the work folder, run its script

A step whose output lines could not all be kept says so in its log: lines over the
log's cap (a policy) in one system line, and lines the disk did not take (the disk is
full) likewise; the second also fails the step, even after exit code 0, with a reason
that gives both (``exit code 0, but 1234 lines of output lost: ...``): its log has
a gap, and the host needs attention before anything more runs there.

A gate's outcome is ``success``, ``failed`` or ``cancelled`` with a reason; the runner
hands it to the machine as `gate_done`. A crash of the work itself (a bug, an unwritable
state folder) fails the gate instead of leaving it running forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.plan import Plan, PlannedPackage, PlannedStep, script_environment
from tentacle.protocol.rpc_messages import LogStream
from tentacle.protocol.runner_machine import NOTHING_TO_DO, Gate, step_index
from tentacle.protocol.states import ACQUISITION, PRE_ACQUISITION, GateState
from tentacle.runner.job import Job
from tentacle.runner.task_store import TaskStore

if TYPE_CHECKING:
    from tentacle.runner.scripts import ScriptResult

log = logging.getLogger("tentacle.runner.runner")

Acquire = Callable[[Plan, PlannedPackage], Awaitable[Path]]
Outcome = tuple[GateState, str]

PARALLELISM: Final = 4
STOPPED: Final = "tentacle stopped"
NOT_CONFIGURED: Final = "package acquisition is not configured on this tentacle"
_T = TypeVar("_T")


class _StepFailed(Exception):
    """A step failed before or instead of its script; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GateWork:
    """Runs gates; ``stopping()`` says that the tentacle is shutting down (no new step starts)."""

    def __init__(
        self, store: TaskStore, acquire: Acquire | None, parallelism: int, stopping: Callable[[], bool]
    ) -> None:
        """``acquire(plan, package)`` returns the verified package file; None: cannot acquire."""
        self._store = store
        self._acquire = acquire
        self._parallelism = parallelism
        self._stopping = stopping

    async def run(self, job: Job, gate: Gate) -> Outcome:
        """Run one gate of ``job`` to its end; its outcome."""
        try:
            await job.saved()  # the gate reads running on disk before anything runs
            event(log, "gate.started", task=job.task_id, gate=gate.name)
            outcome = await self._work(job, gate.name)
        except Exception as exc:
            # A bug or an unwritable state folder must not leave the gate running forever.
            log.exception("gate.crashed task=%s gate=%s", job.task_id, gate.name)
            outcome = GateState.FAILED, describe(exc)
        job.record.current_step = None
        event(log, "gate.finished", task=job.task_id, gate=gate.name, state=outcome[0])
        return outcome

    async def _work(self, job: Job, name: str) -> Outcome:
        """What the gate does on this target."""
        if name == PRE_ACQUISITION:
            return await self._run_steps(job, job.plan.pre_acquisition_steps())
        if name == ACQUISITION:
            return await self._acquire_packages(job)
        step = job.plan.step(step_index(name))
        return await self._run_steps(job, () if step is None else (step,))

    def _stopped(self, job: Job) -> Outcome | None:
        """Why nothing more may start in this job, or None."""
        if job.cancel.is_set():
            return GateState.CANCELLED, job.stop_reason or STOPPED
        if self._stopping():
            return GateState.CANCELLED, STOPPED
        return None

    # --- steps --------------------------------------------------------------------------

    async def _run_steps(self, job: Job, steps: Sequence[PlannedStep]) -> Outcome:
        """Run steps in order until one does not succeed."""
        outcome: Outcome = (GateState.SUCCESS, NOTHING_TO_DO)
        for step in steps:
            outcome = self._stopped(job) or await self._run_step(job, step)
            state, reason = outcome
            if state is GateState.CANCELLED:
                return state, job.stop_reason or STOPPED
            if state is not GateState.SUCCESS:
                return state, reason if len(steps) == 1 else f"step '{step.name}': {reason}"
        return outcome if len(steps) <= 1 else (GateState.SUCCESS, f"{len(steps)} steps succeeded")

    async def _run_step(self, job: Job, step: PlannedStep) -> Outcome:
        """One step, framed by system lines."""
        job.record.current_step = step.index
        await job.changed()  # on disk before anything runs: after a crash it reads "unknown"
        event(log, "step.started", task=job.task_id, step=step.name)
        job.system(step.name, f"step '{step.name}' started")
        dropped, lost = job.log.dropped, job.log.lost
        outcome = await self._step_work(job, step)
        await job.log.settled()  # every line of the step is written, dropped or lost by now
        state, reason = _kept_output(job, step, outcome, job.log.dropped - dropped, job.log.lost - lost)
        job.system(step.name, f"step '{step.name}' finished: {reason}")
        event(log, "step.finished", task=job.task_id, step=step.name, state=state)
        return state, reason

    async def _step_work(self, job: Job, step: PlannedStep) -> Outcome:
        """Extract the step's package, then run its script."""
        # Loaded with the first step: an idle tentacle keeps within its memory budget (bench idle).
        from tentacle.runner.scripts import ScriptError, ScriptSpec, run_script

        try:
            workdir = await asyncio.to_thread(self._store.make_work_dir, job.task_id)
        except OSError as exc:
            return GateState.FAILED, f"cannot create the work folder: {exc}"
        try:
            package_dir = None if step.package is None else await self._extract(job, step, workdir)
            if step.script is None:
                return GateState.SUCCESS, "package extracted"
            env = script_environment(job.plan, step, package_dir)
            spec = ScriptSpec(step.script.syntax, step.script.body, env, workdir, step.timeout_seconds)
            label = job.masker.mask(step.name)  # a step name may quote a secret too

            def on_lines(stream: LogStream, texts: list[str]) -> None:
                job.log.emit_many(stream, label, texts)  # run_script has masked the lines

            result = await run_script(spec, on_lines, job.masker, job.cancel, job.log)
        except _StepFailed as exc:
            return GateState.FAILED, exc.reason
        except ScriptError as exc:
            return GateState.FAILED, exc.message
        return _script_outcome(result)

    async def _extract(self, job: Job, step: PlannedStep, workdir: Path) -> str:
        """Extract the step's acquired package into ``<work>/<index>-package``."""
        package = step.package
        assert package is not None  # the caller checked
        source = job.record.packages.get(package_key(package))
        if source is None:
            raise _StepFailed(f"package {package.id} {package.version} was not acquired on this tentacle")
        dest = workdir / f"{step.index}-package"
        problem = await asyncio.to_thread(_unpack, Path(source), dest, package.file_name)
        if problem is not None:
            raise _StepFailed(f"cannot extract package {package.id} {package.version}: {problem}")
        return str(dest)

    # --- acquisition ------------------------------------------------------------------------

    async def _acquire_packages(self, job: Job) -> Outcome:
        """Acquire every package of the plan; cancellation stops the downloads."""
        packages = job.plan.packages()
        if not packages:
            return GateState.SUCCESS, NOTHING_TO_DO
        if self._acquire is None:
            job.system("", NOT_CONFIGURED)
            return GateState.FAILED, NOT_CONFIGURED
        outcome = await _unless_set(job.cancel, self._acquire_all(job, packages, self._acquire))
        return outcome if outcome is not None else (GateState.CANCELLED, job.stop_reason or STOPPED)

    async def _acquire_all(self, job: Job, packages: Sequence[PlannedPackage], acquire: Acquire) -> Outcome:
        """At most `parallelism` acquisitions at once; the first failure stops the others."""
        limit = asyncio.Semaphore(self._parallelism)
        jobs = [asyncio.ensure_future(_acquire_one(job, p, acquire, limit)) for p in packages]
        try:
            await asyncio.wait(jobs, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for running in jobs:
                running.cancel()  # after a failure (or our own cancellation) the rest is not needed
            await asyncio.wait(jobs)
        for package, done in zip(packages, jobs, strict=True):
            error = None if done.cancelled() else done.exception()
            if error is not None:
                return GateState.FAILED, f"package {package.id} {package.version}: {describe(error)}"
        for package, done in zip(packages, jobs, strict=True):
            job.record.packages[package_key(package)] = str(done.result())
        return GateState.SUCCESS, f"{len(packages)} package(s) acquired"


async def _acquire_one(job: Job, package: PlannedPackage, acquire: Acquire, limit: asyncio.Semaphore) -> Path:
    """One package, within the parallelism limit."""
    async with limit:
        name = f"{package.id} {package.version}"
        job.system("", f"acquiring package {name}")
        path = await acquire(job.plan, package)
        job.system("", f"package {name} acquired")
        return path


# --- pure helpers -------------------------------------------------------------------------


def package_key(package: PlannedPackage) -> str:
    """How task.json names an acquired package."""
    return f"{package.id}/{package.version}"


def describe(error: BaseException) -> str:
    """A short text for an error: our own messages as they are, others with their type."""
    if isinstance(error, TentacleError):
        return error.message
    return f"{type(error).__name__}: {error}"


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


def _script_outcome(result: ScriptResult) -> Outcome:
    """A gate state from a script's result (a timeout is a failure)."""
    if result.outcome in ("success", "cancelled"):
        return GateState(result.outcome), result.reason
    return GateState.FAILED, result.reason


def _kept_output(job: Job, step: PlannedStep, outcome: Outcome, dropped: int, lost: int) -> Outcome:
    """The step's outcome once its log said what it did not keep; lost lines fail it."""
    state, reason = outcome
    if dropped:
        cap = f"{job.log.file.max_bytes / 2**20:g} MiB"
        job.system(step.name, f"{_lines(dropped)} of output dropped: the task's log reached its cap of {cap}")
    if not lost:
        return outcome
    loss = f"{_lines(lost)} of output lost: {job.log.file.lost_reason}"
    event(log, "step.output_lost", logging.WARNING, task=job.task_id, step=step.name, lines=lost)
    if state is GateState.SUCCESS:
        return GateState.FAILED, f"{reason}, but {loss}"
    return state, f"{reason}; {loss}"


def _lines(count: int) -> str:
    """``1 line``, ``2 lines``."""
    return f"{count} line" if count == 1 else f"{count} lines"


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
