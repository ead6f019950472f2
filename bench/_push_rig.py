"""What the push and egress benchmarks share: a server process with big random packages in
its built-in feed, listening tentacle processes, an nginx mirror, a counting TCP relay,
and the server's log.

Everything runs as the user would run it (see rigs.instances): ``python -m server_shim
--home H run`` and ``python -m tentacle --home T run`` as processes on loopback;
packages go in with ``server-shim package push``, the mirror gets ``server-shim feed
export``'s output, tentacles are registered with ``tentacle register --listen``.
Timings come from the server's own log lines (``gate.opened``, ``push.done``: millisecond
timestamps), byte counts from `CountingRelay`.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import signal
import subprocess
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from rigs.instances import Server, Tentacles, free_ports, python, wait_until
from rigs.nginx_mirror import Pki
from server_shim import server_config
from tentacle.net.pki import build_certificate, cert_pem, key_pem, load_cert, new_key, write_private
from tentacle.protocol.plan import PlannedPackage

MIB = 1024 * 1024
ENVIRONMENT, ROLE = "Bench", "web"
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


# --- packages -------------------------------------------------------------------------------


def write_random_zip(path: Path, member_bytes: int) -> int:
    """A .zip holding one *stored* member of random bytes (incompressible, extractable).

    A valid archive, so that the deployment's step can extract it like any package; stored,
    so that the file is as incompressible as its random member. Returns the file's size.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    info = zipfile.ZipInfo("payload.bin", date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = member_bytes
    with zipfile.ZipFile(path, "w") as archive, archive.open(info, "w") as out:
        for offset in range(0, member_bytes, 16 * MIB):
            out.write(os.urandom(min(16 * MIB, member_bytes - offset)))
    return path.stat().st_size


@dataclass(frozen=True)
class FeedFile:
    """A package as the built-in feed stored it (what `server-shim package push` printed)."""

    id: str
    version: str
    sha512: str
    size: int

    @property
    def file_name(self) -> str:
        """The flat-container file name (the feed stores ``{lowerid}.{lowerversion}.zip``)."""
        return f"{self.id.lower()}.{self.version.lower()}.zip"

    def planned(self, acquisition: str = "pull") -> PlannedPackage:
        """The plan entry of this package, for a direct `Acquirer` call."""
        return PlannedPackage(
            id=self.id,
            version=self.version,
            sha512=self.sha512,
            size=self.size,
            file_name=self.file_name,
            feed="mirrors",
            acquisition="pull" if acquisition == "pull" else "push",
        )


def push_package(server: Server, file: Path) -> FeedFile:
    """`server-shim package push FILE`; what the feed recorded."""
    line = server.cli("package", "push", str(file)).splitlines()[-1]
    package_id, version, *rest = line.split()
    fields = dict(part.split("=", 1) for part in rest)
    return FeedFile(package_id, version, fields["sha512"], int(fields["size"]))


def mirror_pki(server_home: Path, directory: Path) -> Pki:
    """nginx's certificate for 127.0.0.1, issued by the server's own CA (as a site would get one).

    The tentacles trust that CA for mirrors and nginx checks their client certificates
    (which that CA issued at registration) against it. Only the CA, the server certificate
    and its key exist: the client fields are placeholders.
    """
    ca_cert = load_cert(server_home / server_config.CA_CERT)
    ca_key = serialization.load_pem_private_key((server_home / server_config.CA_KEY).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise RuntimeError(f"{server_home / server_config.CA_KEY}: not the EC key the server makes")
    directory.mkdir(parents=True, exist_ok=True)
    key = new_key()
    san: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = build_certificate("mirror", key.public_key(), ca_key, issuer=ca_cert.subject, san=san)
    files = Pki(*(directory / name for name in ("ca.pem", "server.pem", "server.key", "-", "-")))
    write_private(files.ca, cert_pem(ca_cert), mode=0o644)
    write_private(files.server_cert, cert_pem(cert), mode=0o644)
    write_private(files.server_key, key_pem(key))
    return files


# --- tentacles ------------------------------------------------------------------------------


class ListeningTentacles(Tentacles):
    """Real tentacle processes in listening mode: the server connects to each one's port."""

    def __init__(self, root: Path, server: Server) -> None:
        super().__init__(root, server)
        self.ports: dict[str, int] = {}

    def register_listening(self, names: list[str], bind: str = "127.0.0.1") -> None:
        """`tentacle register --listen BIND:PORT` for each name, concurrently.

        The server always reaches them at 127.0.0.1:PORT: with another `bind` (127.0.0.2,
        say) they register ``--public-hostname 127.0.0.1``, so that a relay listening on
        127.0.0.1:PORT can sit between the server and each of them.
        """
        token = self.server.cli("token", "create", "--uses", str(len(names)))
        thumbprint = self.server.cli("show-thumbprint")
        common = ["--server", self.server.url, "--token", token, "--server-thumbprint", thumbprint]
        common += ["--environment", ENVIRONMENT, "--role", ROLE]
        if bind != "127.0.0.1":
            common += ["--public-hostname", "127.0.0.1"]
        self.ports.update(zip(names, free_ports(len(names)), strict=True))
        procs = []
        for name in names:
            argv = python("tentacle", "--home", str(self.home(name)), "register", *common, "--name", name)
            argv += ["--listen", f"{bind}:{self.ports[name]}"]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for name, proc in zip(names, procs, strict=True):
            _, err = proc.communicate(timeout=180)
            if proc.returncode != 0:
                raise RuntimeError(f"tentacle register {name} exited {proc.returncode}: {err.decode()}")

    def start_and_wait(self, names: list[str], timeout: float = 120.0) -> float:
        """`tentacle run` for each, then wait until the server sees them all online."""
        self.start(names)
        want = len(names)
        return wait_until(lambda: self.server.online() >= want, timeout, 0.5, f"{want} tentacles online")

    def stop_all(self) -> None:
        """One SIGTERM to each, then wait (SIGKILL after 30 s).

        Not the base class's: its second SIGTERM (from `stop_process`) reaches a tentacle
        still stopping, which takes it as "exit now" (``os._exit(1)``).
        """
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def clear_cache(self, name: str, sha512: str) -> int:
        """Remove a package file (and any partial of it) from a tentacle's cache; how many."""
        found = [*self.home(name).rglob(f"sha512/*/{sha512}"), *self.home(name).rglob(f"partial/{sha512}*")]
        for path in found:
            path.unlink()
        return len(found)

    def cached(self, name: str, sha512: str) -> bool:
        """Whether the tentacle's cache holds the verified file."""
        return any(self.home(name).rglob(f"sha512/*/{sha512}"))


# --- a counting relay -----------------------------------------------------------------------


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection: what it receives goes out on its peer's side."""

    def __init__(self, relay: CountingRelay, *, from_client: bool) -> None:
        self.relay, self.from_client = relay, from_client
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.from_client:
            self.transport.pause_reading()  # until the upstream connection is there

    def data_received(self, data: bytes) -> None:
        if self.from_client:
            self.relay.client_bytes += len(data)
        else:
            self.relay.upstream_bytes += len(data)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def pause_writing(self) -> None:  # our output is backed up: stop reading the peer
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class CountingRelay:
    """TCP relays 127.0.0.1:PORT -> HOST:PORT on an event loop in a thread, counting bytes.

    ``client_bytes``: everything the connecting side (here: the server) sent through any
    of them; ``upstream_bytes``: everything that came back. Counted as received from the
    sockets, before relaying: the exact TCP payload, TLS records and all.
    """

    def __init__(self) -> None:
        self.client_bytes = 0
        self.upstream_bytes = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._servers: list[asyncio.Server] = []
        self._links: set[asyncio.Task[None]] = set()

    def start(self, ports: list[int], target_host: str) -> CountingRelay:
        """Listen on 127.0.0.1:PORT for each port, relaying to `target_host`:PORT."""
        self._thread.start()
        for port in ports:
            started = asyncio.run_coroutine_threadsafe(self._listen(port, target_host), self._loop)
            self._servers.append(started.result(10))
        return self

    def counts(self) -> tuple[int, int]:
        """(client_bytes, upstream_bytes), read on the relay's own loop."""

        async def read() -> tuple[int, int]:
            return self.client_bytes, self.upstream_bytes

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)

    def stop(self) -> None:
        """Close the listeners and the loop."""
        if not self._thread.is_alive():
            return

        async def close() -> None:
            for server in self._servers:
                server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self, port: int, target_host: str) -> asyncio.Server:
        loop = asyncio.get_running_loop()

        def accepted() -> _Pipe:
            client = _Pipe(self, from_client=True)
            linking = loop.create_task(self._link(client, target_host, port))
            self._links.add(linking)
            linking.add_done_callback(self._links.discard)
            return client

        return await loop.create_server(accepted, "127.0.0.1", port)

    async def _link(self, client: _Pipe, host: str, port: int) -> None:
        self.connections += 1
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # let connection_made run first
        try:
            _, upstream = await loop.create_connection(lambda: _Pipe(self, from_client=False), host, port)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.peer, upstream.peer = upstream, client
        if client.transport is None or client.transport.is_closing():
            if upstream.transport is not None:
                upstream.transport.close()
            return
        client.transport.resume_reading()


# --- deployments ----------------------------------------------------------------------------


def one_step_project(server: Server, name: str, package: dict[str, str]) -> str:
    """Apply a project whose one step uses `package` (and runs ``true``); release it."""
    doc = {
        "name": name,
        "steps": [
            {
                "name": "Unpack",
                "roles": [ROLE],
                "package": package,
                "script": {"syntax": "bash", "body": "true"},
            }
        ],
    }
    server.call("PUT", f"/api/Default/projects/{name}/v1", doc)
    server.call("POST", "/api/Default/releases/create/v1", {"projectName": name, "releaseVersion": "1.0.0"})
    return "1.0.0"


def deploy_and_wait(server: Server, project: str, version: str, timeout: float = 600.0) -> dict[str, Any]:
    """Deploy to the environment, wait for the task's end; the task (RuntimeError unless success)."""
    body = {"projectName": project, "releaseVersion": version, "environmentNames": [ENVIRONMENT]}
    task_id = server.call("POST", "/api/Default/deployments/create/untenanted/v1", body)["taskId"]
    final: dict[str, Any] = {}

    def ended() -> bool:
        final.update(server.call("GET", f"/api/Default/tasks/{task_id}/v1"))
        return final["state"] in ("success", "failed", "cancelled")

    wait_until(ended, timeout, 0.2, f"task {task_id} to end")
    if final["state"] != "success":
        raise RuntimeError(f"task {task_id} ended {final['state']}: {final.get('error')}")
    return final


# --- the server's log ------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEvent:
    """One event line of the server's log."""

    at: datetime.datetime
    name: str
    fields: dict[str, str]


def log_events(log: Path, *names: str) -> list[LogEvent]:
    """The server log's events with those names, in order."""
    found: list[LogEvent] = []
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[2] not in names:
            continue
        try:
            at = datetime.datetime.fromisoformat(parts[0])
        except ValueError:
            continue
        fields = {k: v.strip('"') for k, v in _FIELD.findall(parts[3] if len(parts) > 3 else "")}
        found.append(LogEvent(at, parts[2], fields))
    return found
