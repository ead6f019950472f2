"""Runs one script step as a subprocess and streams its masked output line by line.

How it works::

    write body to workdir/.tentacle-script-XXXX (0o700)
    spawn interpreter in a new session (own process group), stdin /dev/null,
      stdout/stderr on pipes we own ──▶ each chunk split into lines ──▶ mask ──▶ on_lines
    wait for: exit | timeout | cancel event
      exit            ──▶ drain the pipes for at most DRAIN_AFTER_EXIT, then stop reading
      timeout/cancel  ──▶ SIGTERM to the group, wait `grace` for the group to empty,
                          SIGKILL what is left, then drain as above

The pipes are ours, not asyncio's subprocess pipes: a background daemon that inherited
stdout keeps the write end open forever, and we must be able to stop reading without
waiting for it (or killing it: starting one may be the point of the step). A daemon that
keeps writing to the inherited stdout after the step gets EPIPE: daemons should redirect
their output.

Reading the pipes (lines, masking, flow control) is tentacle.runner.script_output's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tentacle.errors import TentacleError
from tentacle.protocol.masking import Masker
from tentacle.protocol.rpc_messages import LogStream
from tentacle.runner.script_output import POLL, OnLines, OutputPipe, OutputSink, ScriptOutput, drain

_INHERITED = ("PATH", "HOME", "LANG")
_SUFFIX = {"bash": ".sh", "sh": ".sh", "python3": ".py"}


class ScriptError(TentacleError):
    """A script could not be started: unknown syntax, no interpreter, unusable workdir."""


@dataclass(frozen=True)
class ScriptSpec:
    """What to run: the syntax picks the interpreter; env is the script's whole environment
    (PATH, HOME and LANG are inherited from the agent when not given)."""

    syntax: str
    body: str
    env: Mapping[str, str]
    workdir: Path
    timeout: float | None = None
    grace: float = 10.0


@dataclass(frozen=True)
class ScriptResult:
    """How a script ended: outcome is success, failed, timeout or cancelled.

    `exit_code` is None when the process did not exit by itself (killed by a signal).
    """

    outcome: str
    exit_code: int | None
    reason: str


async def run_script(
    spec: ScriptSpec,
    on_lines: OnLines,
    masker: Masker,
    cancel: asyncio.Event | None = None,
    sink: OutputSink | None = None,
) -> ScriptResult:
    """Run one script to its end, calling ``on_lines(stream, texts)`` with the masked lines of each read.

    `stream` is stdout or stderr; lines of one stream arrive in order. `on_lines` is
    called from the event loop and must not block; ``sink``, when given, paces the
    reading (see the module doc). Raises `ScriptError` before anything runs when the
    syntax is unknown or the script cannot be started.
    """
    argv = _interpreter(spec.syntax)
    if cancel is not None and cancel.is_set():
        return ScriptResult("cancelled", None, "cancelled before the script started")
    path = await asyncio.to_thread(_write_script, spec)
    try:
        return await _run([*argv, str(path)], spec, ScriptOutput(on_lines, masker, sink), cancel)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


def _interpreter(syntax: str) -> list[str]:
    """The command line that runs a script file of this syntax."""
    if syntax not in _SUFFIX:
        known = ", ".join(sorted(_SUFFIX))
        raise ScriptError(f"unknown script syntax {syntax!r} (known: {known})")
    if syntax == "python3":
        # -u: unbuffered, so that a Python script's lines reach the server as they happen.
        return [_python3(), "-u"]
    found = shutil.which(syntax)
    if found is None:
        raise ScriptError(f"interpreter {syntax!r} not found on PATH")
    return [found]


def _python3() -> str:
    """The agent's own python3 when it has a sibling of that name, else python3 on PATH."""
    sibling = Path(sys.executable).with_name("python3")
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which("python3")
    if found is None:
        raise ScriptError("interpreter 'python3' not found on PATH")
    return found


def _write_script(spec: ScriptSpec) -> Path:
    """Write the body to a fresh file in the workdir, executable by its owner only."""
    path = spec.workdir.absolute() / f".tentacle-script-{secrets.token_hex(6)}"
    path = path.with_suffix(_SUFFIX[spec.syntax])
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        os.fchmod(fd, 0o700)  # the umask may have taken bits away
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(spec.body)
    except (OSError, UnicodeError) as exc:
        raise ScriptError(f"cannot write the script into {spec.workdir}: {exc}") from exc
    return path


def _environment(given: Mapping[str, str]) -> dict[str, str]:
    """Exactly the given variables, plus the agent's PATH, HOME and LANG when missing."""
    env = dict(given)
    for name in _INHERITED:
        if name not in env and name in os.environ:
            env[name] = os.environ[name]
    return env


async def _run(
    argv: list[str], spec: ScriptSpec, output: ScriptOutput, cancel: asyncio.Event | None
) -> ScriptResult:
    """Spawn the script with our own output pipes and see it through to a result."""
    pipes: list[OutputPipe] = []
    try:
        for stream in (LogStream.STDOUT, LogStream.STDERR):
            pipes.append(await OutputPipe.open(stream, output))
        proc = await _spawn(argv, spec, pipes[0].write_fd, pipes[1].write_fd)
    except BaseException:
        for pipe in pipes:
            pipe.close()
        raise
    finally:
        for pipe in pipes:
            pipe.close_write_end()
    try:
        result = await _supervise(proc, spec, cancel)
    except BaseException:
        # Our caller gave up on the step (the agent is stopping): leave nothing running.
        _signal_group(proc.pid, signal.SIGKILL)
        raise
    finally:
        await drain(pipes)
    return result


async def _spawn(argv: list[str], spec: ScriptSpec, stdout: int, stderr: int) -> asyncio.subprocess.Process:
    """Start the interpreter in its own session, translating failures to ScriptError."""
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=spec.workdir,
            env=_environment(spec.env),
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        raise ScriptError(f"cannot start {argv[0]} in {spec.workdir}: {exc}") from exc


async def _supervise(
    proc: asyncio.subprocess.Process, spec: ScriptSpec, cancel: asyncio.Event | None
) -> ScriptResult:
    """Wait for the exit, or stop the group on timeout or cancellation."""
    cause = await _wait_exit(proc, spec, cancel)
    if cause is None:
        return _exited(proc.returncode)
    why = f"after timeout of {spec.timeout:g} s" if cause == "timeout" else "after cancellation"
    killed = await _stop_group(proc, spec.grace)
    code = proc.returncode if proc.returncode is not None and proc.returncode >= 0 else None
    if killed:
        how = f"killed by SIGKILL {why} (still running {spec.grace:g} s after SIGTERM)"
    else:
        how = f"terminated by SIGTERM {why}"
    return ScriptResult(cause, code, how)


async def _wait_exit(
    proc: asyncio.subprocess.Process, spec: ScriptSpec, cancel: asyncio.Event | None
) -> str | None:
    """None when the process exited by itself, else "timeout" or "cancelled"."""
    exited = asyncio.ensure_future(proc.wait())
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    waiting = {exited} if cancelled is None else {exited, cancelled}
    try:
        done, _ = await asyncio.wait(waiting, timeout=spec.timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiting:
            task.cancel()
    if exited in done:
        return None
    return "cancelled" if cancelled in done else "timeout"


def _exited(returncode: int | None) -> ScriptResult:
    """The result of a process that ended without us stopping it."""
    if returncode == 0:
        return ScriptResult("success", 0, "exit code 0")
    if returncode is not None and returncode > 0:
        return ScriptResult("failed", returncode, f"exit code {returncode}")
    name = signal.Signals(-returncode).name if returncode is not None else "unknown"
    return ScriptResult("failed", None, f"killed by signal {name}")


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> bool:
    """SIGTERM the group, SIGKILL it if it is not gone after `grace`; True if killed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    _signal_group(proc.pid, signal.SIGTERM)
    killed = False
    while await asyncio.to_thread(_group_alive, proc.pid):
        if loop.time() >= deadline:
            killed = _signal_group(proc.pid, signal.SIGKILL)
            break
        await asyncio.sleep(POLL)
    await proc.wait()
    return killed


def _signal_group(pgid: int, signum: signal.Signals) -> bool:
    """Send a signal to a process group; False when nothing was there to get it."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    # kill(0) also succeeds for zombies that nobody reaped yet (an init that does not
    # reap orphans, as in some containers): look at each member's state instead.
    return any(_member_runs(entry, pgid) for entry in proc.iterdir() if entry.name.isdigit())


def _member_runs(entry: Path, pgid: int) -> bool:
    """Whether /proc/PID describes a live (not zombie) member of the process group."""
    try:
        stat = (entry / "stat").read_text()
    except OSError:
        return False
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X")
