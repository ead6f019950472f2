"""Pull benchmark: a 1 GiB package from nginx over mutual TLS, curl against the tentacle.

In the same run and from the same nginx (``ssl_verify_client on``): (a) curl with the
client certificate writing the file to disk; (b) the tentacle's `Acquirer` into an empty
cache (download, SHA-512 check, fsync, atomic rename). Each runs 3 times (2 with
``--quick``, on 128 MiB) alternately, each after an ``os.sync()``, and the best of each
counts. Target: (b)/(a) >= 1.0.

Three more figures, for context and not part of the ratio: curl followed by an fsync of its
file (the same durability the cache promises); the disk's own ceiling for that, a plain
O_DIRECT write of the same size followed by fsync; and the CPU's ceiling for the check, one
core hashing the same size with SHA-512 (one stream cannot be hashed on two cores). curl
alone leaves its bytes in the page cache and checks nothing; on a machine whose disk, or
whose one core's SHA-512, is slower than curl, nothing that verifies the file and makes it
durable can keep up with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from resource import RUSAGE_CHILDREN, RUSAGE_SELF
from typing import Any

import msgspec

from rigs.nginx_mirror import Nginx, Pki, write_feed
from tentacle.net.tls import client_context
from tentacle.packages.cache import PackageCache
from tentacle.packages.pull import Acquirer
from tentacle.protocol.plan import Plan, PlannedPackage

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


def time_curl(nginx: Nginx, pki: Pki, pkg: PlannedPackage, out: Path, *, durable: bool = False) -> float:
    """Seconds for curl to fetch the package to `out` with the client certificate (then fsync)."""
    url = f"https://127.0.0.1:{nginx.port}/flatcontainer/{pkg.id.lower()}/{VERSION}/{pkg.file_name}"
    argv = ["curl", "-sS", "--fail", "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    argv += ["--cacert", str(pki.ca), "-o", str(out), url]
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    if durable:
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - start
    if out.stat().st_size != pkg.size:
        raise RuntimeError(f"curl wrote {out.stat().st_size} bytes, expected {pkg.size}")
    out.unlink()
    return seconds


def time_tentacle(nginx: Nginx, pki: Pki, pkg: PlannedPackage, cache_dir: Path) -> float:
    """Seconds for the Acquirer to fetch, verify and store the package into an empty cache."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    planned = msgspec.structs.replace(pkg, mirrors=(nginx.index_url,))
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


def time_disk(size: int, out: Path) -> float:
    """Seconds to write `size` bytes with O_DIRECT in 4 MiB blocks and fsync: the disk's ceiling."""
    import mmap

    block = mmap.mmap(-1, 4 * MIB)  # page-aligned, as O_DIRECT wants
    block.write(os.urandom(4 * MIB))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0)
    start = time.perf_counter()
    fd = os.open(out, flags, 0o600)
    try:
        for _ in range(size // (4 * MIB)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    out.unlink()
    return seconds


def time_sha512(size: int) -> float:
    """Seconds for one core to SHA-512 `size` bytes (from memory): the check's ceiling."""
    block = os.urandom(4 * MIB)
    digest = hashlib.sha512()
    start = time.perf_counter()
    for _ in range(size // len(block)):
        digest.update(block)
    return time.perf_counter() - start


def client_cpu(measure: Callable[[], float], who: int) -> tuple[float, float]:
    """`measure()`'s seconds, and the CPU seconds (user + system) that `who` used meanwhile."""
    import resource

    os.sync()  # no run pays for the dirty pages of the one before
    before = resource.getrusage(who)
    seconds = measure()
    after = resource.getrusage(who)
    return seconds, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


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
            names = ("curl", "tentacle", "curl+fsync", "disk", "sha512")
            times: dict[str, list[float]] = {name: [] for name in names}
            cpu: dict[str, list[float]] = {"curl": [], "tentacle": []}  # the client's, not nginx's
            for _ in range(runs):  # alternate, so all see the same machine state
                for name, who, measure in (
                    ("curl", RUSAGE_CHILDREN, lambda: time_curl(nginx, pki, pkg, root / "curl.out")),
                    ("tentacle", RUSAGE_SELF, lambda: time_tentacle(nginx, pki, pkg, root / "cache")),
                ):
                    seconds, used = client_cpu(measure, who)
                    times[name].append(seconds)
                    cpu[name].append(used)
                os.sync()
                times["curl+fsync"].append(time_curl(nginx, pki, pkg, root / "curl.out", durable=True))
                os.sync()
                times["disk"].append(time_disk(size, root / "disk.out"))
                times["sha512"].append(time_sha512(size))
        finally:
            nginx.stop()
    mbps = {name: size / min(runs_s) / 1e6 for name, runs_s in times.items()}
    ratio = mbps["tentacle"] / mbps["curl"]
    print(f"pull of {size // MIB} MiB over mutual TLS from nginx, best of {runs}")
    print(f"  {'client':<32} {'MB/s':>8}  runs (s)")
    labels = {
        "curl": "curl",
        "tentacle": "tentacle (verified, durable)",
        "curl+fsync": "curl, then fsync (context)",
        "disk": "disk: O_DIRECT + fsync (ceiling)",
        "sha512": "one core: SHA-512 (ceiling)",
    }
    for name, label in labels.items():
        print(f"  {label:<32} {mbps[name]:>8.0f}  {' '.join(f'{t:.2f}' for t in times[name])}")
    best_cpu = {name: used[times[name].index(min(times[name]))] for name, used in cpu.items()}
    for name, used in best_cpu.items():
        print(f"  CPU seconds of {name} in its best run (nginx's not counted): {used:.2f}")
    print(f"  ratio tentacle/curl: {ratio:.2f} (target >= 1.0)")
    print(f"  ratio tentacle/(curl, then fsync): {mbps['tentacle'] / mbps['curl+fsync']:.2f} (context)")
    return {
        "benchmark": "pull",
        "figures": {
            "curl_MBps": round(mbps["curl"], 1),
            "tentacle_MBps": round(mbps["tentacle"], 1),
            "curl_then_fsync_MBps": round(mbps["curl+fsync"], 1),
            "disk_direct_fsync_MBps": round(mbps["disk"], 1),
            "sha512_one_core_MBps": round(mbps["sha512"], 1),
            "curl_cpu_s": round(best_cpu["curl"], 2),
            "tentacle_cpu_s": round(best_cpu["tentacle"], 2),
            "size_bytes": size,
        },
        "ratio": round(ratio, 3),
        "target": ">= 1.0",
        "met": ratio >= 1.0,
    }
