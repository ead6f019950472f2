"""Push benchmark: a 1 GiB package pushed by the server to a listening tentacle, against a pull.

One random (incompressible) package of 1 GiB (``--quick``: 128 MiB; a .zip with one stored
member, so that the step can extract it) goes into the built-in feed of a real server
(``server-shim package push``); ``server-shim feed export`` writes the same file to a
static feed that nginx serves with mutual TLS (``ssl_verify_client on``). Then, alternately,
5 times each (2 with ``--quick``), and the best of each counts (this machine's disk
varies by a third from one run to the next, so 3 runs left the ratio to chance):

(a) pull: the tentacle's `Acquirer` fetches the file from nginx into an empty cache
    (download, SHA-512 check, fsync, atomic rename): bench.pull_bench's ``time_tentacle``.
(b) push: a real deployment whose one step uses the package (acquisition "push"), from
    a real ``server-shim run`` process to a real listening ``tentacle run`` process whose
    cache was emptied first. The server's `Pusher` runs as the acquisition gate's hook
    (HEAD, then one PUT of the whole file; the tentacle hashes, fsyncs and renames it
    before it answers 200). Timed on the server's own log: from ``gate.opened
    gate=acquisition`` to ``push.done`` (millisecond timestamps); the PUT's wire bytes
    must be the file's size (random bytes go without zstd).

Why separate processes for the push: in one process the server and the tentacle share
one event loop and one GIL, and the push would pay for both ends on one core; as
processes they run as they do in production (on this machine's 2 cores). The pull is
just as honest: nginx is its own process, the `Acquirer` runs in this one.
``os.sync()`` before every timed run, so that no run pays for the previous one's dirty
pages (the extraction of the step writes the package's member to disk).

Target: push/pull throughput ratio >= 0.8.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench._push_rig import (
    MIB,
    FeedFile,
    ListeningTentacles,
    deploy_and_wait,
    log_events,
    one_step_project,
    push_package,
    write_random_zip,
)
from bench.pull_bench import time_tentacle
from rigs.instances import Server
from rigs.nginx_mirror import Nginx, Pki
from tentacle.protocol.coordinator import ACQUISITION

PACKAGE_ID = "Bench.Push"
VERSION = "1.0.0"
PROJECT = "BenchPush"
TARGET = "push-01"
TARGET_RATIO = 0.8


def time_push(server: Server, tentacles: ListeningTentacles, pkg: FeedFile, release: str) -> float:
    """Seconds from the acquisition gate's opening to the end of the push, for one deployment."""
    tentacles.clear_cache(TARGET, pkg.sha512)
    os.sync()
    task = deploy_and_wait(server, PROJECT, release)
    task_id = str(task["taskId"])
    events = log_events(server.log, "gate.opened", "push.done", "push.cached", "push.failed")
    opened = [
        i
        for i, e in enumerate(events)
        if e.name == "gate.opened" and e.fields.get("task") == task_id and e.fields.get("gate") == ACQUISITION
    ]
    if not opened:
        raise RuntimeError(f"task {task_id}: no gate.opened gate={ACQUISITION} in {server.log}")
    after = [e for e in events[opened[0] + 1 :] if e.name != "gate.opened"]
    if not after or after[0].name != "push.done":
        raise RuntimeError(f"task {task_id}: the package was not pushed: {after[:1]}")
    done = after[0]
    if int(done.fields["wire_bytes"]) != pkg.size:
        raise RuntimeError(
            f"push sent {done.fields['wire_bytes']} bytes on the wire, the file has {pkg.size}"
        )
    if not tentacles.cached(TARGET, pkg.sha512):
        raise RuntimeError("the tentacle's cache does not hold the package after the deployment")
    return (done.at - events[opened[0]].at).total_seconds()


def time_pull(nginx: Nginx, pki: Pki, pkg: FeedFile, cache_dir: Path) -> float:
    """bench.pull_bench's measure of the `Acquirer`, after a sync."""
    os.sync()
    return time_tentacle(nginx, pki, pkg.planned("pull"), cache_dir)


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    member = (128 if quick else 1024) * MIB
    runs = 2 if quick else 5
    pulls: list[float] = []
    pushes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        root = Path(tmp)
        server = Server(root / "server")
        server.init()
        source = root / "upload" / f"{PACKAGE_ID}.{VERSION}.zip"
        write_random_zip(source, member)
        pkg = push_package(server, source)
        source.unlink()
        server.cli("feed", "export", "--relative", str(root / "export"))
        pki = Pki.create(root / "pki")
        nginx = Nginx(root / "nginx", root / "export", pki)
        tentacles = ListeningTentacles(root / "tentacles", server)
        try:
            nginx.start()
            server.start()
            tentacles.register_listening([TARGET])
            tentacles.start_and_wait([TARGET])
            release = one_step_project(server, PROJECT, {"id": PACKAGE_ID, "acquisition": "push"})
            for _ in range(runs):  # alternate, so both see the same machine state
                pulls.append(time_pull(nginx, pki, pkg, root / "cache"))
                pushes.append(time_push(server, tentacles, pkg, release))
        finally:
            tentacles.stop_all()
            server.stop()
            nginx.stop()
    pull_mbps = pkg.size / min(pulls) / 1e6
    push_mbps = pkg.size / min(pushes) / 1e6
    ratio = push_mbps / pull_mbps
    median_ratio = statistics.median(pulls) / statistics.median(pushes)
    print(f"push vs pull of a {pkg.size / MIB:.0f} MiB random package over mutual TLS, best of {runs}")
    print(f"  {'path':<44} {'MB/s':>8}  runs (s)")
    print(f"  {'pull: Acquirer <- nginx':<44} {pull_mbps:>8.0f}  {' '.join(f'{t:.2f}' for t in pulls)}")
    label = "push: server process -> tentacle process"
    print(f"  {label:<44} {push_mbps:>8.0f}  {' '.join(f'{t:.2f}' for t in pushes)}")
    print(f"  ratio push/pull: {ratio:.2f} (target >= {TARGET_RATIO}); of the medians: {median_ratio:.2f}")
    return {
        "benchmark": "push",
        "figures": {
            "pull_MBps": round(pull_mbps, 1),
            "push_MBps": round(push_mbps, 1),
            "size_bytes": pkg.size,
            "pull_runs_s": [round(t, 3) for t in pulls],
            "push_runs_s": [round(t, 3) for t in pushes],
            "ratio_of_medians": round(median_ratio, 3),
        },
        "ratio": round(ratio, 3),
        "target": f"push/pull >= {TARGET_RATIO}",
        "met": ratio >= TARGET_RATIO,
    }
