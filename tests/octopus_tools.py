"""Octopus Deploy's official TypeScript API client for the tests, driven from Python.

`make test` installs ``@octopusdeploy/api-client`` 3.11.0 from the npm registry into
``.tools/octopus/`` (git-ignored; Node and npm come from tools/system-deps.sh); a test
that needs it fails, never skips, when it is missing. `OctopusClient` runs
tests/octopus_client.js, which connects the unmodified client to a server (trusting the
server's CA through ``NODE_EXTRA_CA_CERTS``, as a user would) and performs one call of
the client's own API per request line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENT_VERSION = "3.11.0"
CALL_TIMEOUT = 90.0  # the longest operation is a wait, which the client itself bounds at 60 s
MODULES = ROOT / ".tools" / "octopus" / "node_modules"
PACKAGE = MODULES / "@octopusdeploy" / "api-client" / "package.json"
SCRIPT = ROOT / "tests" / "octopus_client.js"
INSTALL_HINT = (
    "run `make octopus-client` (apt: nodejs npm; npm: @octopusdeploy/api-client@3.11.0 into .tools/octopus)"
)


def node() -> str:
    """The node program, and the client installed where the tests look (pytest.fail otherwise)."""
    found = shutil.which("node")
    if found is None:
        pytest.fail(f"node is not installed: {INSTALL_HINT}")
    if not PACKAGE.is_file():
        pytest.fail(f"@octopusdeploy/api-client is not installed in {MODULES}: {INSTALL_HINT}")
    version = json.loads(PACKAGE.read_text())["version"]
    if version != CLIENT_VERSION:
        pytest.fail(f"@octopusdeploy/api-client {version} is installed, not {CLIENT_VERSION}: {INSTALL_HINT}")
    return found


class ClientError(Exception):
    """An operation the client reported as failed: ``error`` has message, StatusCode, ErrorMessage, Errors."""

    def __init__(self, op: str, error: dict[str, Any]) -> None:
        super().__init__(f"{op}: {error}")
        self.error = error


class OctopusClient:
    """One running client: `call` performs one operation of tests/octopus_client.js."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc, self.info = proc, info
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        ca: Path,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        space: str = "Default",
    ) -> OctopusClient:
        """Start the client against `url`; ClientError when its connection (``Client.create``) fails."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "NODE_PATH": str(MODULES),
            "NODE_EXTRA_CA_CERTS": str(ca),
            "OCTOPUS_URL": url,
            "OCTOPUS_SPACE": space,
            **({"OCTOPUS_API_KEY": api_key} if api_key else {}),
            **({"OCTOPUS_ACCESS_TOKEN": access_token} if access_token else {}),
        }
        proc = await asyncio.create_subprocess_exec(
            node(), str(SCRIPT), env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        hello = json.loads(first or b"{}")
        if "ready" not in hello:
            await proc.wait()
            raise ClientError("connect", hello.get("failed", {"message": "the client exited"}))
        return cls(proc, hello["ready"])

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            answer = json.loads(line)
            future = self._waiting.pop(answer.get("id"), None)
            if future is not None and not future.done():
                future.set_result(answer)
        for future in self._waiting.values():
            future.set_exception(RuntimeError("the client exited"))

    async def call(self, op: str, **args: Any) -> Any:
        """Perform `op` with `args`; its result, or ClientError."""
        assert self.proc.stdin is not None
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self.proc.stdin.write(json.dumps({"id": request_id, "op": op, "args": args}).encode() + b"\n")
        await self.proc.stdin.drain()
        answer = await asyncio.wait_for(future, CALL_TIMEOUT)
        if "error" in answer:
            raise ClientError(op, answer["error"])
        return answer["result"]

    async def refused(self, op: str, **args: Any) -> dict[str, Any]:
        """Perform an `op` that must fail; the error the client reported."""
        with pytest.raises(ClientError) as caught:
            await self.call(op, **args)
        return caught.value.error

    async def close(self) -> None:
        """End the client."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
