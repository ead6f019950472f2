"""Reconnect benchmark: restart the server under 5,000 connected polling agents.

A fresh server instance and N load-generator agents (`rigs.loadgen`: real protocol,
real mutual TLS, the tentacle's own reconnect schedule, `Backoff`), all online. Then
SIGTERM to the server, and ``server-shim run`` again on the same ports as soon as it
has exited. Figures: seconds from the SIGTERM until the server's machines list shows
every agent online again, with the parts (the old server's exit, the new one's start).

Target: <= 60 s for 5,000 agents (``--quick``: 500 agents, <= 10 s).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rigs.instances import Server, mib, print_table, raise_fd_limit, wait_until
from rigs.loadgen import LoadGen, provision


def restart(server: Server, agents: int) -> dict[str, Any]:
    """SIGTERM, start again, wait until all are online; the figures of that."""
    start = time.monotonic()
    exit_seconds = server.stop()
    start_seconds = server.start()
    serving = time.monotonic() - start
    online_seconds = wait_until(lambda: server.online() == agents, 600, 0.5, f"{agents} online again")
    total = time.monotonic() - start
    return {
        "oldServerExitSeconds": round(exit_seconds, 2),
        "newServerStartSeconds": round(start_seconds, 2),
        "servingAgainSeconds": round(serving, 2),
        "allOnlineAfterServingSeconds": round(online_seconds, 1),
        "allOnlineSeconds": round(total, 1),
        "serverRssAfterMiB": mib(server.stats().rss),
    }


def run(agents: int, root: Path) -> dict[str, Any]:
    """A server with `agents` connected agents, restarted once."""
    server = Server(root / "server")
    server.init()
    identities = provision(
        server.home, [f"lg-{i:05d}" for i in range(agents)], "Bench", "web", root / "agents"
    )
    server.start()
    load = LoadGen(
        identities, server.polling_url, server.home / "ca.pem", server.cli("show-thumbprint"), root
    )
    try:
        load.start()
        wait_until(lambda: server.online() == agents, 300, 0.5, f"{agents} online")
        time.sleep(2)
        return {"agents": agents, **restart(server, agents)}
    finally:
        load.stop()
        server.stop()


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    raise_fd_limit()
    agents, limit = (500, 10.0) if quick else (5000, 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-reconnect-") as tmp:
        figures = run(agents, Path(tmp))
    met = figures["allOnlineSeconds"] <= limit
    target = f"{agents:,} polling agents online again <= {limit:.0f} s after SIGTERM"
    rows = [
        ("agents", f"{agents}", "", ""),
        ("old server exited", f"{figures['oldServerExitSeconds']} s", "", ""),
        ("new server serving", f"{figures['servingAgainSeconds']} s", "", ""),
        ("all online after SIGTERM", f"{figures['allOnlineSeconds']} s", f"<= {limit:.0f} s", str(met)),
        ("server RSS after", f"{figures['serverRssAfterMiB']} MiB", "", ""),
    ]
    print_table("reconnect: server restart under connected polling agents", rows)
    return {"benchmark": "reconnect", "figures": figures, "ratio": None, "target": target, "met": met}
