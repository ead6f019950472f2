"""Load generator: N polling agents speaking the real protocol over real mutual TLS.

How it works. `provision` gives every agent its own ECDSA P-256 key and a certificate
signed by the instance's CA (`server_shim.ca.Authority`), and records the machines in
the server's database directly (`server_shim.store.machine_rows.insert`), before the server
starts: registration is not what is measured. `LoadGen` then runs the agents in a few
worker processes (``python -m rigs.loadgen SPEC``), so that they use the other core
and not the server's. Each agent keeps one websocket to the polling port, exactly like
`tentacle.agent.polling_client.PollingClient`: the same connector pinning the server's thumbprint,
the same heartbeat, and the same reconnect schedule (`tentacle.protocol.backoff.Backoff`,
reset on each successful connection). It answers ``ping`` and the ``task.*`` methods as
the real runner (`tentacle.runner.runner`) answers them on the wire, for a one-step script
whose script prints one line and succeeds at once.

Workers report on stdout, one JSON line every `REPORT_EVERY` seconds:
``{"connected": n, "connects": total, "failures": total, "gates": total}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from rigs.instances import raise_fd_limit
from server_shim.ca import Authority
from server_shim.server_config import DATABASE_FILE
from server_shim.store import machine_rows as machines
from server_shim.store import signing_keys
from server_shim.store.database import Database
from tentacle import __version__
from tentacle.net import pki
from tentacle.net.tls import pinned_connector
from tentacle.protocol import messages
from tentacle.protocol.backoff import Backoff
from tentacle.protocol.messages import MessageError, Method, Request, Response
from tentacle.protocol.plan import Plan
from tentacle.protocol.rpc_messages import (
    CALLS,
    UNKNOWN_TASK,
    GateParams,
    GateReport,
    GateResult,
    LogLine,
    LogStream,
    NoParams,
    PingResult,
    RotateParams,
    RotateResult,
    StartParams,
    StartResult,
    StatusParams,
    StatusResult,
    StopParams,
    StopResult,
    read_params,
    reported,
    unknown_task_status,
)
from tentacle.protocol.states import GateState, TaskState
from tentacle.protocol.wire import Wire

REPORT_EVERY = 0.25
HEARTBEAT = 20.0  # tentacle.agent.agent_config.HeartbeatConfig's default


# --- provisioning (in the benchmark's process) ------------------------------------------


@dataclass(frozen=True)
class AgentIdentity:
    """One agent: its machine name and the PEM file holding its key and certificate."""

    name: str
    pem: Path


def provision(
    server_home: Path, names: list[str], environment: str, role: str, out: Path, database: str = ""
) -> list[AgentIdentity]:
    """Keys, CA-signed certificates and machine rows for `names` (server not running); the rows go
    to ``database`` (a PostgreSQL URL) when given, else to the instance's SQLite file."""
    out.mkdir(parents=True, exist_ok=True)
    authority = Authority(server_home)
    now = time.time()
    agents: list[AgentIdentity] = []
    rows: list[machines.Machine] = []
    for name in names:
        key = pki.new_key()
        cert = authority.sign(pki.build_csr(key, name).decode(), name)
        pem = out / f"{name}.pem"
        pem.write_bytes(pki.key_pem(key) + pki.cert_pem(cert))
        agents.append(AgentIdentity(name, pem))
        rows.append(
            machines.Machine(
                space="Default",
                name=name,
                thumbprint=pki.cert_thumbprint(cert),
                certificate=pki.cert_pem(cert).decode(),
                mode="polling",
                endpoint=None,
                environments=(environment,),
                roles=(role,),
                registered_at=now,
            )
        )
    db = Database(database or server_home / "state" / DATABASE_FILE)
    try:
        db.sync(_insert_all, rows)
    finally:
        db.close()
    return agents


def _insert_all(conn: sqlite3.Connection, rows: list[machines.Machine]) -> None:
    """The machines, each pinning the current signing key, as registration records them."""
    current = conn.execute("SELECT key_id FROM signing_keys WHERE current = 1").fetchone()
    for row in rows:
        machines.insert(conn, row, force=False)
        if current is not None:
            signing_keys.pin(conn, row.thumbprint, current["key_id"])


# --- the controller (in the benchmark's process) -----------------------------------------


class LoadGen:
    """Runs `agents` in `workers` processes and sums their reports."""

    def __init__(
        self, agents: list[AgentIdentity], url: str, ca: Path, pin: str, root: Path, workers: int = 2
    ) -> None:
        self.agents, self.url, self.ca, self.pin, self.root = agents, url, ca, pin, root
        self.workers = max(1, min(workers, len(agents)))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.reports: dict[int, dict[str, int]] = {}
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker processes (each takes every `workers`-th agent)."""
        for index in range(self.workers):
            spec = {
                "url": self.url,
                "ca": str(self.ca),
                "pin": self.pin,
                "agents": [[a.name, str(a.pem)] for a in self.agents[index :: self.workers]],
            }
            path = self.root / f"loadgen-{index}.json"
            path.write_text(json.dumps(spec))
            proc = subprocess.Popen(
                [sys.executable, "-m", "rigs.loadgen", str(path)],
                stdout=subprocess.PIPE,
                stderr=(self.root / f"loadgen-{index}.log").open("wb"),
            )
            self.procs.append(proc)
            reader = threading.Thread(target=self._read, args=(index, proc), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                self.reports[index] = json.loads(line)

    def total(self, key: str) -> int:
        """The sum of one reported counter over the workers."""
        return sum(report.get(key, 0) for report in list(self.reports.values()))

    def connected(self) -> int:
        """How many agents hold an open websocket now."""
        return self.total("connected")

    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [proc.pid for proc in self.procs]

    def stop(self) -> None:
        """Stop every worker."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the agents (in a worker process) ----------------------------------------------------


@dataclass
class _Task:
    """What the runner would hold for one task: state, version, shown gates, log."""

    plan: Plan
    state: TaskState = TaskState.RUNNING
    version: int = 1
    gates: dict[int, GateReport] = field(default_factory=dict)
    log: list[LogLine] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        """A state change: bump the version and wake the long polls."""
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


class TaskFailure(Exception):
    """A request the real runner would refuse: (code, message) as it answers them."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class FakeRunner:
    """The task methods of `tentacle.runner.runner.TaskRunner` on the wire, for script steps that say hi."""

    def __init__(self, name: str, stats: dict[str, int]) -> None:
        self.name = name
        self.stats = stats
        self.tasks: dict[str, _Task] = {}
        self.handlers: dict[Method, Callable[[Any], Awaitable[Wire]]] = {
            Method.PING: self.ping,
            Method.TASK_START: self.start,
            Method.TASK_GATE: self.gate,
            Method.TASK_STATUS: self.status,
            Method.TASK_CANCEL: self.cancel,
            Method.TASK_FINISH: self.finish,
            Method.TRUST_ROTATE: self.rotate,
        }

    async def handle(self, request: Request) -> Response:
        """Answer one request like `tentacle.agent.rpc.Service.handle`: typed params in, typed result out."""
        try:
            params = read_params(CALLS[request.method], request)
            return Response.success(request.id, await self.handlers[request.method](params))
        except MessageError as exc:
            return Response.failure(request.id, "MessageError", exc.message)
        except TaskFailure as exc:
            return Response.failure(request.id, exc.code, exc.message)

    async def ping(self, params: NoParams) -> PingResult:
        """As `Service._ping`."""
        return PingResult(name=self.name, mode="polling", version=__version__, time=time.time())

    async def start(self, params: StartParams) -> StartResult:
        """task.start: accept the plan once; the slot is free, so it runs at once."""
        plan = params.plan
        task = self.tasks.setdefault(plan.task_id, _Task(plan))
        return StartResult(task_id=plan.task_id, state=task.state)

    async def gate(self, params: GateParams) -> GateResult:
        """task.gate: the step runs and succeeds at once, printing one line."""
        task = self._known(params.task_id)
        index, name = params.gate_index, params.gate_name
        if index not in task.gates:
            step = task.plan.step(int(name.split(":", 1)[1])) if name.startswith("step:") else None
            label = step.name if step is not None else ""
            seq = len(task.log) + 1
            task.log.append(
                LogLine(seq=seq, time=time.time(), stream=LogStream.STDOUT, step=label, text="hi")
            )
            task.gates[index] = GateReport(
                index=index, name=name, state=GateState.SUCCESS, reason="exit code 0"
            )
            task.state = TaskState.SUCCESS
            task.touch()
            self.stats["gates"] += 1
        return GateResult(task_id=task.plan.task_id, accepted=True)

    async def status(self, params: StatusParams) -> StatusResult:
        """task.status: a long poll for a newer version or log lines after logSince."""
        task = self.tasks.get(params.task_id)
        if task is None:
            return unknown_task_status(params.task_id)
        since = params.log_since
        await _wait_for_news(task, since, params.version, params.wait)
        return StatusResult(
            task_id=params.task_id,
            state=reported(task.state),
            version=task.version,
            gates=[task.gates[i] for i in sorted(task.gates)],
            log=[line for line in task.log if line.seq > since],
            more=False,
        )

    async def cancel(self, params: StopParams) -> StopResult:
        """task.cancel: nothing runs for long here, so only the state changes."""
        return self._stop(params.task_id, TaskState.CANCELLED)

    async def finish(self, params: StopParams) -> StopResult:
        """task.finish: the server is done with the task (one it finishes while running is cancelled)."""
        return self._stop(params.task_id, TaskState.CANCELLED)

    async def rotate(self, params: RotateParams) -> RotateResult:
        """trust.rotate: take the key. A load generator checks no signatures: its CPU is the server's too."""
        return RotateResult(key_id=params.key_id)

    def _stop(self, task_id: str, state: TaskState) -> StopResult:
        task = self.tasks.get(task_id)
        if task is None:
            return StopResult(task_id=task_id, state=UNKNOWN_TASK)
        if task.state is TaskState.RUNNING:
            task.state = state
        task.touch()
        return StopResult(task_id=task_id, state=reported(task.state))

    def _known(self, task_id: str) -> _Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskFailure("UnknownTaskError", f"unknown task {task_id!r}")
        return task


async def _wait_for_news(task: _Task, since: int, version: int, wait: float) -> None:
    """As the runner's long poll: until a newer version, a line after ``since``, or ``wait`` s."""
    deadline = time.monotonic() + wait
    while task.version <= version and len(task.log) <= since:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await task.changed.wait()


class Agent:
    """One polling agent: connect, serve, reconnect on the real schedule."""

    def __init__(self, name: str, pem: Path, ca: Path, stats: dict[str, int]) -> None:
        self.name, self.pem, self.ca = name, pem, ca
        self.stats = stats
        self.backoff = Backoff()
        self.runner = FakeRunner(name, stats)
        self._ctx: ssl.SSLContext | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    def context(self) -> ssl.SSLContext:
        """Its client context: trusts the server CA only, presents its own certificate.

        Built by hand rather than with tentacle.net.tls.client_context, which also loads the
        system trust store: 30 ms and 0.8 MB per context, too much times 5,000 agents
        (trust here comes from the CA and the pinned thumbprint, as in the tentacle).
        """
        if self._ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.check_hostname = False
            ctx.load_verify_locations(cafile=str(self.ca))
            ctx.load_cert_chain(self.pem)
            self._ctx = ctx
        return self._ctx

    async def run(self, session: aiohttp.ClientSession, url: str) -> None:
        """Connect, serve, and retry after `Backoff.next_delay()`, as PollingClient.run."""
        while True:
            await self._session(session, url)
            await asyncio.sleep(self.backoff.next_delay())

    async def _session(self, session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.ws_connect(
                url,
                ssl=self.context(),
                heartbeat=HEARTBEAT,
                max_msg_size=messages.MAX_MESSAGE_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ) as ws:
                self.backoff.reset()
                self.stats["connects"] += 1
                self.stats["connected"] += 1
                try:
                    await self._serve(ws)
                finally:
                    self.stats["connected"] -= 1
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.stats["failures"] += 1

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                job = asyncio.create_task(self._answer(ws, msg.data))
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)

    async def _answer(self, ws: aiohttp.ClientWebSocketResponse, data: str) -> None:
        try:
            request = messages.decode(data)
        except MessageError as exc:
            response = messages.refusal(data, exc)
        else:
            response = await self.runner.handle(request) if isinstance(request, Request) else None
        if response is not None and not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_frame(messages.encode(response), aiohttp.WSMsgType.TEXT)


async def _report(stats: dict[str, int]) -> None:
    while True:
        print(json.dumps(stats), flush=True)
        await asyncio.sleep(REPORT_EVERY)


async def run_worker(spec: dict[str, Any]) -> None:
    """Run the spec's agents until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stats = {"connected": 0, "connects": 0, "failures": 0, "gates": 0}
    ca = Path(spec["ca"])
    agents = [Agent(name, Path(pem), ca, stats) for name, pem in spec["agents"]]
    # One session for all: each websocket holds its own connection; the pins are the real ones.
    connector = pinned_connector([spec["pin"]], limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        jobs = [asyncio.create_task(agent.run(session, spec["url"])) for agent in agents]
        reporter = asyncio.create_task(_report(stats))
        await stop.wait()
        for job in [*jobs, reporter]:
            job.cancel()
        await asyncio.gather(*jobs, reporter, return_exceptions=True)


def worker_main(spec_path: str) -> None:
    """The worker process: raise the open-file limit, run the agents."""
    raise_fd_limit()
    spec = json.loads(Path(spec_path).read_text())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_worker(spec))
    os._exit(0)  # thousands of sockets are closed by the kernel faster than one by one


if __name__ == "__main__":
    worker_main(sys.argv[1])
