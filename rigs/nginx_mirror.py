"""Real nginx mirrors for tests and benchmarks: certificates, a static feed, the process.

A mirror here is what a site runs in production: nginx serving a static NuGet v3 feed
(the layout ``server-shim feed export`` writes) over TLS, with ``ssl_verify_client on``
against the server's CA. `Pki` makes that CA plus a server and a client certificate with
`tentacle.net.pki`, the same shape the server issues at registration. `write_feed` lays out a
feed by hand; `Nginx` runs ``nginx -c CONF -p DIR`` in the foreground and reads its
access log, whose lines (`LogLine`) say what each request asked for and got.

`TcpProxy` sits between a client and nginx and misbehaves on purpose: it cuts the first
connection that passes a byte count, or stalls it, so that resume and failover can be
shown against the real server. The pytest fixtures at the end (``pki``, ``mirrors``,
``proxies``; import their ``*_fixture`` functions into a test module) fail, never skip,
when nginx is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from tentacle.net.pki import build_certificate, cert_pem, key_pem, new_key, write_private
from tentacle.protocol.plan import PlannedPackage

NGINX = "/usr/sbin/nginx"
MISSING = "nginx not installed: apt-get install nginx-light"
# One line per request: what the tests assert on (see LogLine).
_LOG_FORMAT = (
    '$request_method $uri $status $body_bytes_sent "$http_range" "$http_if_range" $ssl_client_verify'
)


class NginxMissing(RuntimeError):
    """nginx is not installed where the tests and benchmarks expect it."""


def nginx_binary() -> str:
    """The nginx executable; raises `NginxMissing` naming the package to install."""
    found = shutil.which("nginx") or (NGINX if Path(NGINX).exists() else None)
    if found is None:
        raise NginxMissing(MISSING)
    return found


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        """Issue all three under `directory` (keys 0600), as the server's CA would."""
        ca_key = new_key()
        ca = build_certificate("Tentacle test CA", ca_key.public_key(), ca_key, ca=True)
        files = cls(*(directory / name for name in _PKI_FILES))
        # localhost too: Mono (NuGet.exe) matches host names only, never IP addresses.
        ip: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
        ]
        for cert_path, key_path, name, san in (
            (files.server_cert, files.server_key, "mirror", ip),
            (files.client_cert, files.client_key, "web-01", None),
        ):
            key = new_key()
            cert = build_certificate(name, key.public_key(), ca_key, issuer=ca.subject, san=san)
            write_private(cert_path, cert_pem(cert), mode=0o644)
            write_private(key_path, key_pem(key))
        write_private(files.ca, cert_pem(ca), mode=0o644)
        return files


_PKI_FILES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")


@dataclass(frozen=True)
class FeedPackage:
    """A package file placed in a feed, and the plan entry that points at it."""

    path: Path
    planned: PlannedPackage

    @property
    def root(self) -> Path:
        """The feed directory (what a mirror serves): DIR of DIR/flatcontainer/ID/VERSION/FILE."""
        return self.path.parents[3]


def write_feed(root: Path, package_id: str, version: str, data: bytes, ext: str = "zip") -> FeedPackage:
    """Write a static v3 feed holding one package: service index, versions, the file."""
    lower_id, lower_version = package_id.lower(), version.lower()
    file_name = f"{lower_id}.{lower_version}.{ext}"
    folder = root / "flatcontainer" / lower_id
    (folder / lower_version).mkdir(parents=True, exist_ok=True)
    resource = {"@id": "flatcontainer/", "@type": "PackageBaseAddress/3.0.0"}
    (root / "index.json").write_text(json.dumps({"version": "3.0.0", "resources": [resource]}))
    (folder / "index.json").write_text(json.dumps({"versions": [lower_version]}))
    path = folder / lower_version / file_name
    path.write_bytes(data)
    planned = PlannedPackage(
        id=package_id,
        version=version,
        sha512=hashlib.sha512(data).hexdigest(),
        size=len(data),
        file_name=file_name,
        feed="mirrors",
        acquisition="pull",
    )
    return FeedPackage(path, planned)


@dataclass(frozen=True)
class LogLine:
    """One request as nginx logged it."""

    method: str
    uri: str
    status: int
    body_bytes: int
    range: str
    if_range: str
    client_verify: str

    @classmethod
    def parse(cls, line: str) -> LogLine:
        """Read a line written with `_LOG_FORMAT`."""
        head, range_, _, if_range, verify = line.rsplit('"', 4)
        method, uri, status, size = head.split()
        range_, if_range = (value.replace("\\x22", '"') for value in (range_, if_range))  # nginx escapes "
        return cls(method, uri, int(status), int(size), range_, if_range, verify.strip())


@dataclass
class Nginx:
    """One nginx process serving a directory over mutual TLS on 127.0.0.1."""

    prefix: Path
    root: Path
    pki: Pki
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    crl: Path | None = None  # a revocation list for ``ssl_crl`` (server-shim show-crl)
    verify_clients: bool = True  # False: a public mirror, as NuGet clients without certificates use

    @property
    def index_url(self) -> str:
        """The service index URL: what a mirror candidate is."""
        return f"https://127.0.0.1:{self.port}/index.json"

    @property
    def access_log(self) -> Path:
        """Where nginx logs every request."""
        return self.prefix / "access.log"

    def start(self) -> Nginx:
        """Write the configuration and run nginx on `port` (0: a free one) until it serves.

        nginx refuses ``listen 127.0.0.1:0``, so the socket is bound and listening here and
        nginx inherits it (the ``NGINX`` variable of its binary upgrade): the port is ours
        before nginx starts, with no window for another program to take it.
        """
        binary = nginx_binary()
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf, pid_file = self.prefix / "nginx.conf", self.prefix / "nginx.pid"
        pid_file.unlink(missing_ok=True)
        with socket.socket() as sock, (self.prefix / "stderr.log").open("wb") as log:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(511)
            self.port = int(sock.getsockname()[1])
            conf.write_text(self._config())
            self.process = subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(self.prefix), "-e", str(self.prefix / "error.log")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NGINX": f"{sock.fileno()};"},
                pass_fds=(sock.fileno(),),
            )
        self._wait_for_pid_file(pid_file)
        return self

    def stop(self) -> None:
        """Stop nginx (it exits on SIGTERM) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def requests(self, uri_suffix: str = "", at_least: int = 0, timeout: float = 5.0) -> list[LogLine]:
        """The logged requests whose path ends with `uri_suffix`, once there are `at_least`.

        nginx logs a request after its last byte is sent, which can be a moment after the
        client has it all: a test that expects N requests waits for N lines (up to `timeout`).
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self._logged(uri_suffix)
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def _logged(self, uri_suffix: str) -> list[LogLine]:
        if not self.access_log.exists():
            return []
        lines = [LogLine.parse(line) for line in self.access_log.read_text().splitlines() if line]
        return [line for line in lines if line.uri.endswith(uri_suffix)]

    def _wait_for_pid_file(self, pid_file: Path, timeout: float = 10.0) -> None:
        """nginx writes its pid file once its configuration is loaded and its socket taken over.

        (A connection test would pass at once: the inherited socket queues connections even
        while nginx is still starting, or failing to.)
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                errors = (self.prefix / "error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {errors[-2000:]}")
            if pid_file.exists() and pid_file.read_text().strip():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx did not start on port {self.port} within {timeout} s")

    def _config(self) -> str:
        p = self.prefix
        temp_paths = "\n".join(
            f"    {kind}_temp_path {p / (kind + '_temp')};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # `user`: as root, workers would otherwise drop to nobody and could not read tmp
        # directories (0700); as anyone else nginx ignores it with a warning.
        return f"""
daemon off;
user {pwd.getpwuid(os.getuid()).pw_name};
worker_processes 1;
pid {p / "nginx.pid"};
error_log {p / "error.log"} warn;
events {{ worker_connections 128; }}
http {{
    log_format tests '{_LOG_FORMAT}';
    access_log {self.access_log} tests;
{temp_paths}
    types {{ application/json json; application/octet-stream nupkg zip gz; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.pki.server_cert};
        ssl_certificate_key {self.pki.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_verify_client {"on" if self.verify_clients else "off"};
        ssl_client_certificate {self.pki.ca};{f"{chr(10)}        ssl_crl {self.crl};" if self.crl else ""}
        root {self.root};
    }}
}}
"""


@dataclass
class TcpProxy:
    """A TCP relay to a port on 127.0.0.1 that cuts or stalls one connection on purpose.

    ``cut_after``: the first connection to carry that many bytes towards the client is
    closed right there. ``stall_after``: every connection stops relaying towards the
    client after that many bytes (and stays open). ``downstream`` counts every byte
    relayed towards clients.
    """

    target_port: int
    cut_after: int | None = None
    stall_after: int | None = None
    downstream: int = 0
    connections: int = 0
    cuts: int = 0
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def index_url(self) -> str:
        """The service index as seen through the proxy."""
        return f"https://127.0.0.1:{self.port}/index.json"

    async def start(self) -> TcpProxy:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener and every relayed connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, towards_client=False)),
            asyncio.create_task(self._pump(up_reader, writer, towards_client=True)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for end in (writer, up_writer):
                end.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, towards_client: bool
    ) -> None:
        relayed = 0
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if towards_client:
                    data = await self._limit(data, relayed)
                    relayed += len(data)
                    self.downstream += len(data)
                sink.write(data)
                await sink.drain()
                if towards_client and self._should_cut(relayed):
                    return

    async def _limit(self, data: bytes, relayed: int) -> bytes:
        """Trim `data` at a cut or stall point; a stall then waits until cancelled."""
        limit = self.stall_after
        if self.cut_after is not None and self.cuts == 0:
            limit = self.cut_after if limit is None else min(limit, self.cut_after)
        if limit is None or relayed + len(data) < limit:
            return data
        if limit == self.stall_after and relayed >= limit:
            self.stalled.set()
            await asyncio.Event().wait()
        return data[: max(0, limit - relayed)]

    def _should_cut(self, relayed: int) -> bool:
        if self.cut_after is not None and self.cuts == 0 and relayed >= self.cut_after:
            self.cuts += 1
            return True
        return False


# --- pytest fixtures ----------------------------------------------------------------


@pytest.fixture(name="pki")
def pki_fixture(tmp_path: Path) -> Pki:
    """A CA with a mirror's server certificate and a tentacle's client certificate."""
    return Pki.create(tmp_path / "pki")


@dataclass
class Mirrors:
    """Starts nginx mirrors for a test and stops them all at its end."""

    base: Path
    pki: Pki
    running: list[Nginx] = field(default_factory=list)

    def start(self, root: Path, name: str = "mirror", crl: Path | None = None) -> Nginx:
        """A mirror serving `root` (fails the test when nginx is missing)."""
        try:
            nginx = Nginx(self.base / f"{name}-{len(self.running)}", root, self.pki, crl=crl).start()
        except NginxMissing as exc:
            pytest.fail(str(exc))
        self.running.append(nginx)
        return nginx

    def stop_all(self) -> None:
        """Stop every mirror this test started."""
        for nginx in self.running:
            nginx.stop()


@pytest.fixture(name="mirrors")
def mirrors_fixture(tmp_path: Path, pki: Pki) -> Iterator[Mirrors]:
    """Real nginx mirrors with mutual TLS; all stopped at teardown."""
    started = Mirrors(tmp_path / "nginx", pki)
    yield started
    started.stop_all()


@pytest.fixture(name="proxies")
async def proxies_fixture() -> AsyncIterator[list[TcpProxy]]:
    """A list to put started proxies in; each is stopped at teardown."""
    started: list[TcpProxy] = []
    yield started
    for proxy in started:
        await proxy.stop()
