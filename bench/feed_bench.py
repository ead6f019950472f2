"""Feed benchmark: search and registration latency on a large feed; downloads against nginx.

A real ``server-shim run`` process whose database holds 10,000 package ids x 5 versions
(``--quick``: 2,000 x 5), each with a nuspec's worth of metadata and a dependency group,
written in bulk through the store's own catalog functions (the documents are answered
from those rows; no request reads a package file, so these rows need none).

(a) Latency, one keep-alive HTTPS connection, one request at a time (p50, p95, p99 over
    1,000 requests each; ``--quick``: 300): searches (a term that matches one id, a term
    that matches a tenth of them, no term; prerelease and semVerLevel=2.0.0 in turn;
    take=20) and registration indexes of random ids. Target: p95 <= 20 ms for each.
(b) Download throughput of one random 512 MiB package (``--quick``: 64 MiB), pushed
    with ``server-shim package push``: curl fetching it from the server (the API key as
    Basic password) against curl fetching the same file from nginx serving
    ``server-shim feed export`` with mutual TLS, both to /dev/null, alternately, best
    of 3 (2). Target: server/nginx >= 0.8.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import sqlite3
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._push_rig import push_package, write_random_zip
from rigs.instances import Server, free_ports
from rigs.nginx_mirror import Nginx, Pki
from server_shim import server_config
from server_shim.store import feed_catalog as catalog
from server_shim.store.database import Database
from tentacle.common.paths import resolve
from tentacle.protocol.nuget_versions import NuGetVersion
from tentacle.protocol.nuspec import Dependency, DependencyGroup, Manifest

MIB = 1024 * 1024
VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "2.0.0-beta.1", "2.0.0")
WORDS = ("web", "db", "api", "worker", "cache", "auth", "billing", "search", "mail", "queue")
TARGET_MS, TARGET_RATIO = 20.0, 0.8


def _row(package_id: str, version: str, seed: int) -> tuple[Any, ...]:
    word = WORDS[seed % len(WORDS)]
    manifest = Manifest(
        package_id,
        version,
        {"authors": "Bench", "description": f"The {word} part of service {seed}.", "tags": f"{word} bench"},
        (DependencyGroup("net472", (Dependency(f"Bench.Lib{seed % 97:02d}", "[1.0.0, )"),)),),
    )
    parsed = NuGetVersion.parse(version)
    return (
        package_id.lower(), str(parsed), package_id, "0" * 128, 1000, f"{package_id.lower()}.{version}.nupkg",
        time.time(), parsed.full_string, catalog.catalog_json(manifest), int(parsed.is_prerelease),
        int(parsed.is_semver2),
    )  # fmt: skip


def populate(db_path: Path, ids: int) -> None:
    """`ids` package ids with every version of VERSIONS, and their search rows."""

    def insert(conn: sqlite3.Connection) -> None:
        rows = [_row(f"Bench.Pkg{n:05d}", v, n) for n in range(ids) for v in VERSIONS]
        conn.executemany(
            "INSERT INTO packages (lower_id, version, id, sha512, size, file_name, created_at, full_version,"
            " catalog, prerelease, semver2) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        for n in range(ids):
            catalog.refresh_id(conn, f"bench.pkg{n:05d}")

    db = Database(db_path)
    try:
        db.sync(insert)
    finally:
        db.close()


class Client:
    """One keep-alive HTTPS connection to the server, with the admin key as Basic password."""

    def __init__(self, server: Server) -> None:
        ctx = ssl.create_default_context(cafile=str(server.home / server_config.CA_CERT))
        self.conn = http.client.HTTPSConnection("127.0.0.1", server.api_port, context=ctx, timeout=30)
        token = base64.b64encode(f"bench:{server.admin_key()}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def get(self, path: str) -> float:
        """Seconds for one GET, its body read and parsed."""
        start = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        answer = self.conn.getresponse()
        body = answer.read()
        seconds = time.perf_counter() - start
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status} {body[:300]!r}")
        json.loads(body)
        return seconds


def search_paths(ids: int, count: int) -> list[str]:
    """Searches of every kind, in turn."""
    rng = random.Random(7)
    kinds: list[Callable[[], str]] = [
        lambda: f"q=bench.pkg{rng.randrange(ids):05d}",
        lambda: f"q={rng.choice(WORDS)}&prerelease=true&semVerLevel=2.0.0",
        lambda: f"q={rng.choice(WORDS)}&skip={rng.randrange(100)}",
        lambda: "prerelease=true",
        lambda: "q=",
    ]
    return [f"/nuget/v3/search?{kinds[n % len(kinds)]()}&take=20" for n in range(count)]


def registration_paths(ids: int, count: int) -> list[str]:
    """Registration indexes of random ids."""
    rng = random.Random(11)
    return [f"/nuget/v3/registration/bench.pkg{rng.randrange(ids):05d}/index.json" for _ in range(count)]


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p95, p99 in milliseconds."""
    cuts = statistics.quantiles([s * 1000 for s in seconds], n=100)
    return {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2), "p99": round(cuts[98], 2)}


def latencies(server: Server, ids: int, count: int) -> dict[str, dict[str, float]]:
    """Latency of searches and registration indexes (after 50 warm-up requests each)."""
    client = Client(server)
    found = {}
    for name, paths in (
        ("search", search_paths(ids, count + 50)),
        ("registration", registration_paths(ids, count + 50)),
    ):
        timed = [client.get(path) for path in paths]
        found[name] = percentiles(timed[50:])
    return found


def curl_seconds(argv: list[str], size: int) -> float:
    """Seconds for curl to fetch `size` bytes to /dev/null."""
    start = time.perf_counter()
    done = subprocess.run(
        [*argv, "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}"],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    if int(done.stdout) != size:
        raise RuntimeError(f"curl fetched {done.stdout} bytes, expected {size}")
    return seconds


def downloads(root: Path, size: int, runs: int) -> dict[str, list[float]]:
    """Seconds of each download run from a server and from nginx serving its export.

    A server of its own: the big feed's rows have no files, and an export copies every file.
    """
    server = Server(root / "download-server")
    server.init()
    server.start()
    try:
        return _download_runs(server, root, size, runs)
    finally:
        server.stop()


def _download_runs(server: Server, root: Path, size: int, runs: int) -> dict[str, list[float]]:
    source = root / "upload" / "Bench.Download.1.0.0.zip"
    write_random_zip(source, size)
    pkg = push_package(server, source)
    source.unlink()
    (port,) = free_ports(1)
    server.cli("feed", "export", str(root / "export"), "--base-url", f"https://127.0.0.1:{port}/")
    pki = Pki.create(root / "pki")
    nginx = Nginx(root / "nginx", root / "export", pki, port=port).start()
    path = "flatcontainer/bench.download/1.0.0/bench.download.1.0.0.zip"
    ca = str(server.home / server_config.CA_CERT)
    client = ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    basic = ["-u", f"bench:{server.admin_key()}"]
    peers = {
        "server": ["curl", "--cacert", ca, *basic, f"{server.url}/nuget/v3/{path}"],
        "nginx": ["curl", "--cacert", str(pki.ca), *client, f"https://127.0.0.1:{port}/{path}"],
    }
    times: dict[str, list[float]] = {name: [] for name in peers}
    try:
        for _ in range(runs):
            for name, argv in peers.items():
                times[name].append(curl_seconds(argv, pkg.size))
    finally:
        nginx.stop()
    return times


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    ids, count = (2_000, 300) if quick else (10_000, 1_000)
    size, runs = (64 * MIB, 2) if quick else (512 * MIB, 3)
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        root = Path(tmp)
        server = Server(root / "server")
        server.init()
        started = time.perf_counter()
        populate(resolve("server-shim", str(server.home)).state / server_config.DATABASE_FILE, ids)
        populated = time.perf_counter() - started
        server.start()
        try:
            latency = latencies(server, ids, count)
        finally:
            server.stop()
        times = downloads(root, size, runs)
    mbps = {name: size / min(runs_s) / 1e6 for name, runs_s in times.items()}
    ratio = mbps["server"] / mbps["nginx"]
    worst_p95 = max(figures["p95"] for figures in latency.values())
    print(f"feed: {ids} ids x {len(VERSIONS)} versions ({populated:.1f} s to write), {count} requests each")
    for name, ms in latency.items():
        print(f"  {name:<14} p50 {ms['p50']:6.2f} ms  p95 {ms['p95']:6.2f} ms  p99 {ms['p99']:6.2f} ms")
    for name, runs_s in times.items():
        shown = " ".join(f"{t:.2f}" for t in runs_s)
        print(f"  download from {name:<7} {mbps[name]:7.0f} MB/s  runs (s): {shown}")
    print(f"  ratio server/nginx: {ratio:.2f} (target >= {TARGET_RATIO})")
    print(f"  worst p95: {worst_p95} ms (target <= {TARGET_MS})")
    return {
        "benchmark": "feed",
        "figures": {
            "packages": ids * len(VERSIONS),
            "search_ms": latency["search"],
            "registration_ms": latency["registration"],
            "server_MBps": round(mbps["server"], 1),
            "nginx_MBps": round(mbps["nginx"], 1),
            "size_bytes": size,
        },
        "ratio": round(ratio, 3),
        "target": f"p95 <= {TARGET_MS} ms; download >= {TARGET_RATIO} x nginx",
        "met": worst_p95 <= TARGET_MS and ratio >= TARGET_RATIO,
    }
