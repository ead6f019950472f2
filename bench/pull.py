"""Pull benchmark: a 1 GiB package from nginx over mutual TLS, curl against the tentacle.

In the same run and from the same nginx (``ssl_verify_client on``): (a) curl with the
client certificate writing the file to disk; (b) the tentacle's `Acquirer` into an empty
cache (download, SHA-512 check, fsync, atomic rename). Each runs 3 times (2 with
``--quick``, on 128 MiB) alternately, and the best of each counts. Target: (b)/(a) >= 1.0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tentacle.cache import PackageCache
from tentacle.protocol.plan import Plan, PlannedPackage
from tentacle.pull import Acquirer
from tentacle.tls import client_context
from tests.nginx import Nginx, Pki, write_feed

MIB = 1024 * 1024
PACKAGE_ID = "Bench.Pull"
VERSION = "1.0.0"


def write_random_package(root: Path, size: int) -> PlannedPackage:
    """A feed under `root` holding one package of `size` random bytes (written in chunks)."""
    feed = write_feed(root, PACKAGE_ID, VERSION, b"", ext="zip")
    digest = hashlib.sha512()
    with feed.path.open("wb") as out:
        for offset in range(0, size, 16 * MIB):
            block = os.urandom(min(16 * MIB, size - offset))
            digest.update(block)
            out.write(block)
    return PlannedPackage(
        id=PACKAGE_ID,
        version=VERSION,
        sha512=digest.hexdigest(),
        size=size,
        file_name=feed.planned.file_name,
        feed="mirrors",
        acquisition="pull",
    )


def time_curl(nginx: Nginx, pki: Pki, pkg: PlannedPackage, out: Path) -> float:
    """Seconds for curl to fetch the package to `out` with the client certificate."""
    url = f"https://127.0.0.1:{nginx.port}/flatcontainer/{pkg.id.lower()}/{VERSION}/{pkg.file_name}"
    argv = ["curl", "-sS", "--fail", "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    argv += ["--cacert", str(pki.ca), "-o", str(out), url]
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    seconds = time.perf_counter() - start
    if out.stat().st_size != pkg.size:
        raise RuntimeError(f"curl wrote {out.stat().st_size} bytes, expected {pkg.size}")
    out.unlink()
    return seconds


def time_tentacle(nginx: Nginx, pki: Pki, pkg: PlannedPackage, cache_dir: Path) -> float:
    """Seconds for the Acquirer to fetch, verify and store the package into an empty cache."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    planned = dataclasses.replace(pkg, mirrors=(nginx.index_url,))
    plan = Plan(
        task_id="bench",
        kind="deployment",
        project_name="Bench",
        release_version="1",
        environment_name="Bench",
        machine_name="bench",
        steps=(),
    )

    async def acquire() -> float:
        acquirer = Acquirer(PackageCache(cache_dir), client_context(pki.ca, pki.client_cert, pki.client_key))
        try:
            start = time.perf_counter()
            path = await acquirer(plan, planned)
            seconds = time.perf_counter() - start
        finally:
            await acquirer.close()
        if path.stat().st_size != pkg.size:
            raise RuntimeError(f"the cache holds {path.stat().st_size} bytes, expected {pkg.size}")
        return seconds

    seconds = asyncio.run(acquire())
    shutil.rmtree(cache_dir, ignore_errors=True)
    return seconds


def best(runs: int, measure: Callable[[], float]) -> float:
    """The shortest of `runs` timings."""
    return min(measure() for _ in range(runs))


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    size = (128 if quick else 1024) * MIB
    runs = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        root = Path(tmp)
        pki = Pki.create(root / "pki")
        pkg = write_random_package(root / "feed", size)
        nginx = Nginx(root / "nginx", root / "feed", pki).start()
        try:
            curl_times: list[float] = []
            ours: list[float] = []
            for _ in range(runs):  # alternate, so both see the same machine state
                curl_times.append(time_curl(nginx, pki, pkg, root / "curl.out"))
                ours.append(time_tentacle(nginx, pki, pkg, root / "cache"))
        finally:
            nginx.stop()
    curl_mbps = size / min(curl_times) / 1e6
    tentacle_mbps = size / min(ours) / 1e6
    ratio = tentacle_mbps / curl_mbps
    print(f"pull of {size // MIB} MiB over mutual TLS from nginx, best of {runs}")
    print(f"  {'client':<10} {'MB/s':>8}  runs (s)")
    print(f"  {'curl':<10} {curl_mbps:>8.0f}  {' '.join(f'{t:.2f}' for t in curl_times)}")
    print(f"  {'tentacle':<10} {tentacle_mbps:>8.0f}  {' '.join(f'{t:.2f}' for t in ours)}")
    print(f"  ratio tentacle/curl: {ratio:.2f} (target >= 1.0)")
    return {
        "benchmark": "pull",
        "figures": {
            "curl_MBps": round(curl_mbps, 1),
            "tentacle_MBps": round(tentacle_mbps, 1),
            "size_bytes": size,
        },
        "ratio": round(ratio, 3),
        "target": ">= 1.0",
        "met": ratio >= 1.0,
    }
