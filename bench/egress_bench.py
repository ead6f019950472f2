"""Egress benchmark: bytes leaving the server for one deployment, push against pull.

A real ``server-shim run`` process and 20 real listening ``tentacle run`` processes
(``--quick``: 5), all on loopback. Two random (incompressible) packages of 100 MB each
(``--quick``: 20 MB; .zip files with one stored member, so the step can extract them) go
into the built-in feed; ``server-shim feed export`` writes them to a static feed served
by nginx with mutual TLS and a certificate from the server's CA, named as the mirror feed
``near``. Two one-step projects, deployed to every target one after the other:

- push: the step's package has acquisition "push": the server streams it to each target.
- pull: the step's package is ``{"feed": "near", "acquisition": "pull"}``: each target
  fetches it from nginx; the server only drives the task.

How the server's egress is counted: at the socket level. A listening tentacle takes
every byte the server sends it on connections the server opens to the tentacle's
endpoint (RPC, health checks, pushes), and nothing else (a listening tentacle never calls
the server). So each tentacle listens on 127.0.0.2:PORT and registers ``--public-hostname
127.0.0.1``: the server reaches it at 127.0.0.1:PORT, where a counting TCP relay (in this
process, on its own thread) passes every byte on and counts it, TLS records and all.
Server bytes = what the relays received from the server between the deployment's create
request and 1 s after its end (so ``task.finish`` is in; health checks in that window are
too). The API answers to this benchmark's own requests are not counted. The run fails if
a push failed (the fallback fetches from the server's feed would bypass the relays).

Not /proc/PID/io ``wchar``: it counts write(2) but not send(2)/sendmsg(2), which is what
asyncio uses on sockets; a 100 MB push hardly moves it.

As a cross check the table shows the push body bytes the server logged (``push.done
wire_bytes``) and the body bytes nginx logged as sent in the pull.

Target: pull <= 1% of push.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench._push_rig import (
    CountingRelay,
    ListeningTentacles,
    deploy_and_wait,
    log_events,
    mirror_pki,
    one_step_project,
    push_package,
    write_random_zip,
)
from rigs.instances import Server, mib, print_table, raise_fd_limit
from rigs.nginx_mirror import Nginx

PUSHED, PULLED = "Bench.Egress.Push", "Bench.Egress.Pull"
VERSION = "1.0.0"
MIRROR_FEED = "near"
TARGET_SHARE = 0.01
TENTACLE_HOST = "127.0.0.2"  # the relays listen on 127.0.0.1, the tentacles behind them here


def measure(server: Server, relay: CountingRelay, project: str, release: str) -> dict[str, Any]:
    """Deploy `project` to every target; the bytes the server sent them, and how long it took."""
    sent_before, back_before = relay.counts()
    started = time.monotonic()
    task = deploy_and_wait(server, project, release)
    seconds = time.monotonic() - started
    time.sleep(1.0)  # task.finish goes to each target in the background, just after the end
    sent_after, back_after = relay.counts()
    return {
        "taskId": task["taskId"],
        "targets": len(task["targets"]),
        "seconds": round(seconds, 1),
        "serverBytes": sent_after - sent_before,
        "bytesBack": back_after - back_before,
    }


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    raise_fd_limit()
    targets = 5 if quick else 20
    member = (20 if quick else 100) * 10**6
    names = [f"egress-{i:02d}" for i in range(targets)]
    with tempfile.TemporaryDirectory(prefix="bench-egress-") as tmp:
        root = Path(tmp)
        server = Server(root / "server")
        server.init()
        for package_id in (PUSHED, PULLED):
            source = root / "upload" / f"{package_id}.{VERSION}.zip"
            write_random_zip(source, member)
            size = push_package(server, source).size
            source.unlink()
        server.cli("feed", "export", "--relative", str(root / "export"))
        nginx = Nginx(root / "nginx", root / "export", mirror_pki(server.home, root / "mirror-pki"))
        tentacles = ListeningTentacles(root / "tentacles", server)
        relay = CountingRelay()
        try:
            nginx.start()
            server.cli("feed", "add", MIRROR_FEED, "--mirror", nginx.index_url)
            server.start()
            tentacles.register_listening(names, bind=TENTACLE_HOST)
            relay.start([tentacles.ports[n] for n in names], TENTACLE_HOST)
            tentacles.start_and_wait(names)
            push_release = one_step_project(server, "EgressPush", {"id": PUSHED, "acquisition": "push"})
            pull_release = one_step_project(
                server, "EgressPull", {"id": PULLED, "feed": MIRROR_FEED, "acquisition": "pull"}
            )
            push = measure(server, relay, "EgressPush", push_release)
            pull = measure(server, relay, "EgressPull", pull_release)
            pushes = log_events(server.log, "push.done", "push.failed")
            if failed := [e for e in pushes if e.name == "push.failed"]:
                raise RuntimeError(f"{len(failed)} pushes failed: {failed[0].fields}")
            push["bodyBytesLogged"] = sum(int(e.fields.get("wire_bytes", 0)) for e in pushes)
            served = nginx.requests(".zip", at_least=targets)
            pull["mirrorBodyBytes"] = sum(line.body_bytes for line in served if line.status in (200, 206))
        finally:
            relay.stop()
            tentacles.stop_all()
            server.stop()
            nginx.stop()
    share = pull["serverBytes"] / push["serverBytes"]
    met = share <= TARGET_SHARE and push["targets"] == pull["targets"] == targets
    pushed, pulled = push["serverBytes"], pull["serverBytes"]
    rows = [
        ("targets", f"{targets}", "", ""),
        ("package", f"{size:,} bytes (random)", "", ""),
        ("push: server -> targets", f"{pushed:,} B ({mib(pushed)} MiB)", "", ""),
        ("push: body bytes (server log)", f"{push['bodyBytesLogged']:,} B", f"{targets} x {size:,}", ""),
        ("push: deployment", f"{push['seconds']} s", "", ""),
        ("pull: server -> targets", f"{pulled:,} B ({pulled / 1024:.1f} KiB)", "", ""),
        ("pull: body bytes from nginx", f"{pull['mirrorBodyBytes']:,} B", f"{targets} x {size:,}", ""),
        ("pull: deployment", f"{pull['seconds']} s", "", ""),
        ("pull / push", f"{share:.4%}", f"<= {TARGET_SHARE:.0%}", str(met)),
    ]
    title = f"egress: bytes the server sent, counted by TCP relays, one deployment to {targets} targets"
    print_table(title, rows)
    return {
        "benchmark": "egress",
        "figures": {
            "targets": targets,
            "package_bytes": size,
            "push_server_bytes": push["serverBytes"],
            "pull_server_bytes": pull["serverBytes"],
            "push_body_bytes_logged": push["bodyBytesLogged"],
            "pull_mirror_body_bytes": pull["mirrorBodyBytes"],
            "push_seconds": push["seconds"],
            "pull_seconds": pull["seconds"],
            "measure": "TCP relays in front of every tentacle's listening port (server -> tentacle bytes)",
        },
        "pull_share_of_push": round(share, 6),
        "ratio": round(1 / share, 1) if share else None,  # push bytes per pull byte: higher is better
        "target": f"pull <= {TARGET_SHARE:.0%} of push (ratio >= {1 / TARGET_SHARE:.0f})",
        "met": met,
    }
