"""A reaction's script action: bash or python3, run by the server, with a time limit.

How it works::

    key = a short-lived API key of the reaction's space (server_shim.store.reaction_keys)
    write the body to WORK/<delivery id>.sh|.py (0600)
    spawn the interpreter in a new session (its own process group),
      stdin: the event as JSON; stdout and stderr: one pipe of ours, read up to MAX_OUTPUT
    wait for: exit | the time limit (SIGTERM to the group, SIGKILL after GRACE)
    then SIGKILL what is left of the group, read what the pipe still holds (DRAIN seconds at most),
    revoke the key, and mask the output (the key, the project's sensitive values)

The environment holds the event (``TENTACLE_EVENT_KIND``, ``TENTACLE_PROJECT`` ... and the
whole event as ``TENTACLE_EVENT_JSON``), a webhook's query (``TENTACLE_WEBHOOK_QUERY_<NAME>``)
and body (``TENTACLE_WEBHOOK_BODY``), and what an API client needs: ``SERVER_SHIM_URL``,
``SERVER_SHIM_API_KEY``, ``SERVER_SHIM_SPACE``, ``SERVER_SHIM_CA`` (the `server-shim`
client commands read them). Exit code 0 is success; anything else fails the delivery
for good: a script is not run again because it failed (only when the server died while
it ran, and then with the same ``TENTACLE_DELIVERY_ID``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from server_shim.dispatch import books
from server_shim.store import reaction_keys
from server_shim.store.database import Database
from server_shim.store.delivery_rows import Attempt, AttemptStatus, Due
from tentacle.protocol.masking import Masker, shell_name
from tentacle.protocol.process import Variable
from tentacle.protocol.reactions import Event, ScriptAction
from tentacle.protocol.wire import encode

MAX_OUTPUT: Final = 256 * 1024
MAX_ENV_VALUE: Final = 64 * 1024  # one environment string may not pass 128 KiB on Linux
GRACE: Final = 5.0
DRAIN: Final = 2.0
KEY_MARGIN: Final = 60.0
_SUFFIX: Final = {"bash": ".sh", "python3": ".py"}


class _Output(asyncio.Protocol):
    """Collects what the script writes, up to `MAX_OUTPUT` bytes; counts the rest."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.dropped = 0
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        room = MAX_OUTPUT - len(self.kept)
        self.kept += data[:room]
        self.dropped += max(0, len(data) - room)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def text(self) -> str:
        text = self.kept.decode("utf-8", "replace")
        return text + (f"\n... {self.dropped} more bytes of output not kept" if self.dropped else "")


class ScriptRunner:
    """Runs reactions' scripts in ``work``, telling them the API at ``server_url()``."""

    def __init__(self, db: Database, work: Path, ca: Path, server_url: Callable[[], str]) -> None:
        self.db, self.work, self.ca, self.server_url = db, work, ca, server_url

    async def run(self, due: Due, script: ScriptAction, variables: list[Variable]) -> Attempt:
        """One run of the script; what it gave."""
        started, clock = time.time(), time.monotonic()
        ttl = script.timeout_seconds + GRACE + KEY_MARGIN
        key = await books.write(self.db, reaction_keys.create, due.space, due.reaction, due.delivery_id, ttl)
        masker = Masker([key, *(v.value for v in variables if v.sensitive)])
        try:
            status, error, output = await self._run(due, script, key)
        finally:
            with contextlib.suppress(Exception):  # it expires anyway
                await self.db.run(reaction_keys.revoke, key)
        return Attempt(status, started, time.monotonic() - clock, error=error, log=masker.mask(output))

    async def _run(self, due: Due, script: ScriptAction, key: str) -> tuple[AttemptStatus, str | None, str]:
        path = self.work / f"{due.delivery_id}{_SUFFIX[script.syntax]}"
        await asyncio.to_thread(_write_script, path, script.body)
        reader, writer = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *(script.syntax, str(path)),
                stdin=asyncio.subprocess.PIPE,
                stdout=writer,
                stderr=writer,
                env=self.environment(due, key),
                cwd=self.work,
                start_new_session=True,
            )
        except OSError as exc:
            for end in (reader, writer):
                os.close(end)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)
            return "failed", f"cannot start {script.syntax}: {exc.strerror or exc}", ""
        os.close(writer)  # the script holds it now: the pipe ends when the script's group is gone
        return await self._follow(proc, reader, due.payload, script, path)

    async def _follow(
        self, proc: asyncio.subprocess.Process, reader: int, payload: Event, script: ScriptAction, path: Path
    ) -> tuple[AttemptStatus, str | None, str]:
        loop = asyncio.get_running_loop()
        transport, output = await loop.connect_read_pipe(_Output, os.fdopen(reader, "rb", buffering=0))
        feeding = asyncio.create_task(_feed(proc, encode(payload)))  # a script need not read it all
        try:
            try:
                code: int | None = await asyncio.wait_for(proc.wait(), script.timeout_seconds)
            except TimeoutError:
                code = None
                await _stop(proc)
            _kill_group(proc.pid, signal.SIGKILL)  # what the script left running goes with it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output.closed), DRAIN)
        except asyncio.CancelledError:
            _kill_group(proc.pid, signal.SIGKILL)
            raise
        finally:
            feeding.cancel()
            transport.close()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink)
        if code is None:
            return "failed", f"timed out after {script.timeout_seconds:g} s (killed)", output.text()
        if code != 0:
            return "failed", f"exit code {code}", output.text()
        return "succeeded", None, output.text()

    def environment(self, due: Due, key: str) -> dict[str, str]:
        """The script's whole environment."""
        payload = due.payload
        env = {
            "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]
            ),
            "HOME": os.environ.get("HOME", str(self.work)),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "SERVER_SHIM_URL": self.server_url(),
            "SERVER_SHIM_API_KEY": key,
            "SERVER_SHIM_SPACE": due.space,
            "SERVER_SHIM_CA": str(self.ca),
            "TENTACLE_DELIVERY_ID": due.delivery_id,
            "TENTACLE_REACTION_NAME": due.reaction,
            **event_environment(payload),
        }
        return {name: value.replace("\x00", "") for name, value in env.items()}


def event_environment(payload: Event) -> dict[str, str]:
    """The event as environment variables (what fits: one value may not pass `MAX_ENV_VALUE`)."""
    env = {
        "TENTACLE_EVENT_KIND": payload.kind,
        "TENTACLE_EVENT_ID": str(payload.seq),
        "TENTACLE_SPACE": payload.space or "",
        "TENTACLE_PROJECT": payload.project_name or "",
        "TENTACLE_RELEASE_VERSION": payload.release_version or "",
        "TENTACLE_ENVIRONMENT": ",".join(payload.environment_names),
        "TENTACLE_MACHINE_NAME": payload.machine_name or "",
        "TENTACLE_TASK_ID": payload.task_id or "",
        "TENTACLE_TASK_STATE": payload.task_state or "",
        "TENTACLE_TENANT": payload.tenant_name or "",
    }
    whole = encode(payload).decode()
    if len(whole) <= MAX_ENV_VALUE:
        env["TENTACLE_EVENT_JSON"] = whole
    query = payload.details.get("query")
    if isinstance(query, dict):
        for name, value in query.items():
            env[f"TENTACLE_WEBHOOK_QUERY_{shell_name(str(name)).upper()}"] = str(value)[:MAX_ENV_VALUE]
    if "body" in payload.details:
        body = json.dumps(payload.details["body"])
        if len(body) <= MAX_ENV_VALUE:
            env["TENTACLE_WEBHOOK_BODY"] = body
    return env


def _write_script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(body)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    """Give the script the event on stdin (a script that does not read it is fine)."""
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the group, SIGKILL after `GRACE`."""
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), GRACE)
    except TimeoutError:
        _kill_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
