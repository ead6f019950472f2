"""The script runner, with real interpreters and real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tentacle.protocol.masking import MASK, Masker
from tentacle.runner.script_output import LINE_LIMIT, LineSplitter
from tentacle.runner.scripts import (
    ScriptError,
    ScriptResult,
    ScriptSpec,
    run_script,
)

pytestmark = pytest.mark.timeout(20)


class Output:
    """The lines a script printed, as on_lines received them."""

    def __init__(self) -> None:
        """No lines yet."""
        self.lines: list[tuple[str, str]] = []

    def __call__(self, stream: str, texts: list[str]) -> None:
        """Record the lines of one read."""
        self.lines += [(stream, text) for text in texts]

    def of(self, stream: str) -> list[str]:
        """The lines of one stream, in the order they came."""
        return [text for name, text in self.lines if name == stream]


async def run(
    workdir: Path,
    body: str,
    *,
    syntax: str = "bash",
    env: Mapping[str, str] | None = None,
    secrets: tuple[str, ...] = (),
    output: Output | None = None,
    cancel: asyncio.Event | None = None,
    step_timeout: float | None = None,
    grace: float = 10.0,
) -> tuple[ScriptResult, Output]:
    """Run a script body and return its result and what it printed."""
    output = output if output is not None else Output()
    spec = ScriptSpec(syntax, body, dict(env or {}), workdir, timeout=step_timeout, grace=grace)
    result = await run_script(spec, output, Masker(secrets), cancel)
    return result, output


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie nobody reaped does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def entries(directory: Path) -> list[str]:
    """The names in a directory, sorted."""
    return sorted(path.name for path in directory.iterdir())


def write(path: Path, text: str) -> None:
    """Create a file with this text."""
    path.write_text(text)


def real(path: Path) -> str:
    """The path with symlinks resolved, as pwd prints it."""
    return str(path.resolve())


@pytest.fixture
def daemons() -> Iterator[list[int]]:
    """Pids of processes a test left running on purpose; killed afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


ENV_BODIES = {
    "bash": 'echo "$GREETING"; echo "${LEAK:-unset}"; echo "$HOME"; echo "${BASH_VERSION:+bash}"',
    "sh": 'echo "$GREETING"; echo "${LEAK:-unset}"; echo "$HOME"; echo sh',
    "python3": (
        "import os, sys\n"
        "print(os.environ['GREETING'])\n"
        "print(os.environ.get('LEAK', 'unset'))\n"
        "print(os.environ['HOME'])\n"
        "print('python%d' % sys.version_info[0])\n"
    ),
}


@pytest.mark.parametrize("syntax", sorted(ENV_BODIES))
async def test_each_syntax_runs_and_sees_exactly_its_env(
    syntax: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bash, sh and python3 run; they see the given env and HOME, not the agent's others."""
    monkeypatch.setenv("LEAK", "agent-only")
    result, output = await run(tmp_path, ENV_BODIES[syntax], syntax=syntax, env={"GREETING": "hi"})
    assert result == ScriptResult("success", 0, "exit code 0")
    marker = {"bash": "bash", "sh": "sh", "python3": "python3"}[syntax]
    assert output.of("stdout") == ["hi", "unset", os.environ["HOME"], marker]


async def test_non_zero_exit_is_a_failure_with_the_code(tmp_path: Path) -> None:
    """A script exiting 3 fails with exit code 3."""
    result, _ = await run(tmp_path, "echo doing; exit 3")
    assert result == ScriptResult("failed", 3, "exit code 3")


async def test_stdout_and_stderr_both_arrive_in_order(tmp_path: Path) -> None:
    """Lines of both streams arrive, each stream in the order it was written."""
    body = "for i in $(seq 1 200); do echo out$i; echo err$i >&2; done"
    result, output = await run(tmp_path, body)
    assert result.outcome == "success"
    assert output.of("stdout") == [f"out{i}" for i in range(1, 201)]
    assert output.of("stderr") == [f"err{i}" for i in range(1, 201)]


async def test_last_line_without_newline_is_delivered(tmp_path: Path) -> None:
    """Output that does not end with a newline still arrives as a last line."""
    _, output = await run(tmp_path, "printf 'first\\nno newline'")
    assert output.of("stdout") == ["first", "no newline"]


async def test_sensitive_values_are_masked_on_both_streams(tmp_path: Path) -> None:
    """Secrets never reach on_line: mid-line, on stderr, and one containing another."""
    env = {"SHORT": "hunter2", "LONG": "xx-hunter2-yy"}
    body = 'echo "pw=$SHORT; done"; echo "token $LONG!" >&2; echo "$LONG$SHORT"'
    _, output = await run(tmp_path, body, env=env, secrets=("hunter2", "xx-hunter2-yy"))
    assert output.of("stdout") == [f"pw={MASK}; done", f"{MASK}{MASK}"]
    assert output.of("stderr") == [f"token {MASK}!"]
    assert all("hunter2" not in text for _, text in output.lines)


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """On timeout the script and its children get SIGTERM; a child's pid is gone after."""
    output = Output()
    started = time.monotonic()
    result, _ = await run(tmp_path, "sleep 100 & echo $!; wait", output=output, step_timeout=0.5)
    assert time.monotonic() - started < 3
    assert result.outcome == "timeout"
    assert result.reason == "terminated by SIGTERM after timeout of 0.5 s"
    child = int(output.of("stdout")[0])
    assert not alive(child)


async def test_cancel_event_delivers_sigterm_to_a_trap(tmp_path: Path) -> None:
    """Setting the cancel event sends SIGTERM; the script's trap runs and reports."""
    cancel = asyncio.Event()
    output = Output()

    def on_lines(stream: str, texts: list[str]) -> None:
        output(stream, texts)
        if "ready" in texts:
            cancel.set()

    body = "trap 'echo got TERM; exit 7' TERM; echo ready; sleep 100 & wait"
    spec = ScriptSpec("bash", body, {}, tmp_path)
    result = await run_script(spec, on_lines, Masker([]), cancel)
    assert result == ScriptResult("cancelled", 7, "terminated by SIGTERM after cancellation")
    assert output.of("stdout") == ["ready", "got TERM"]


async def test_cancel_before_start_runs_nothing(tmp_path: Path) -> None:
    """An event already set means the script never starts."""
    cancel = asyncio.Event()
    cancel.set()
    result, _ = await run(tmp_path, "touch ran", cancel=cancel)
    assert result.outcome == "cancelled"
    assert entries(tmp_path) == []


async def test_script_ignoring_sigterm_is_killed_after_grace(tmp_path: Path) -> None:
    """A script that ignores SIGTERM gets SIGKILL once the grace period is over."""
    body = "trap '' TERM; while true; do sleep 0.05; done"
    started = time.monotonic()
    result, _ = await run(tmp_path, body, step_timeout=0.3, grace=0.5)
    elapsed = time.monotonic() - started
    reason = "killed by SIGKILL after timeout of 0.3 s (still running 0.5 s after SIGTERM)"
    assert result == ScriptResult("timeout", None, reason)
    assert 0.8 <= elapsed < 3


async def test_asyncio_cancellation_kills_the_group(tmp_path: Path) -> None:
    """When the caller cancels the task running the step, nothing of the script survives."""
    output = Output()
    started = asyncio.Event()

    def on_lines(stream: str, texts: list[str]) -> None:
        output(stream, texts)
        started.set()

    spec = ScriptSpec("bash", "sleep 100 & echo $!; wait", {}, tmp_path)
    task = asyncio.ensure_future(run_script(spec, on_lines, Masker([])))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    child = int(output.of("stdout")[0])
    for _ in range(50):  # SIGKILL is immediate, but the kernel takes a moment to reap
        if not alive(child):
            break
        await asyncio.sleep(0.02)
    assert not alive(child)


async def test_background_daemon_does_not_hang_the_step(tmp_path: Path, daemons: list[int]) -> None:
    """A daemon holding stdout open lets the step return quickly, and keeps running."""
    output = Output()
    started = time.monotonic()
    body = "sleep 1000 & echo $!; nohup sleep 1000 & echo $!; echo started"
    result, _ = await run(tmp_path, body, output=output)
    elapsed = time.monotonic() - started
    pids = [int(text) for text in output.of("stdout")[:2]]
    daemons.extend(pids)
    assert result.outcome == "success"
    assert output.of("stdout")[2] == "started"
    assert elapsed < 2
    assert all(alive(pid) for pid in pids)


async def test_long_lines_are_split_on_character_boundaries(tmp_path: Path) -> None:
    """A line longer than 64 KiB arrives in pieces of at most 64 KiB, no character broken."""
    body = "import sys\nsys.stdout.write('é' * 100000 + '\\nshort\\n')\n"
    _, output = await run(tmp_path, body, syntax="python3")
    lines = output.of("stdout")
    assert lines[-1] == "short"
    pieces = lines[:-1]
    assert len(pieces) == 4
    assert all(len(piece.encode()) <= LINE_LIMIT for piece in pieces)
    assert "".join(pieces) == "é" * 100000


def test_line_splitter_joins_chunks_and_drops_crlf() -> None:
    """Lines split across chunks are joined; CRLF endings lose their CR."""
    splitter = LineSplitter(limit=10)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\r\nde\n0123456789\nx") == [b"abc", b"de", b"0123456789"]
    assert splitter.feed(b"0123456789") == [b"x012345678"]
    assert splitter.flush() == b"9"
    assert splitter.flush() is None


async def test_script_runs_in_its_workdir_as_a_private_file(tmp_path: Path) -> None:
    """The script's cwd is the workdir, its file is mode 700 there, and removed after."""
    write(tmp_path / "readme.txt", "from the package\n")
    body = 'pwd; cat readme.txt; stat -c %a "$0"; dirname "$0"'
    result, output = await run(tmp_path, body)
    assert result.outcome == "success"
    assert output.of("stdout") == [real(tmp_path), "from the package", "700", str(tmp_path)]
    assert entries(tmp_path) == ["readme.txt"]


async def test_unknown_syntax_raises_before_anything_runs(tmp_path: Path) -> None:
    """An unknown syntax is a ScriptError and no file is written."""
    with pytest.raises(ScriptError, match="unknown script syntax 'powershell'"):
        await run(tmp_path, "Write-Host hi", syntax="powershell")
    assert entries(tmp_path) == []


async def test_missing_workdir_is_a_script_error(tmp_path: Path) -> None:
    """A workdir that does not exist is reported as a ScriptError, not an OSError."""
    with pytest.raises(ScriptError, match="cannot write the script"):
        await run(tmp_path / "missing", "true")
