"""This node among the others on one database: its lease, takeovers, cancels and drain.

How it works. Every `BEAT_SECONDS` the node renews its row (`node_rows.beat`: heartbeat,
agents, tasks) and then:
- takes over the unfinished tasks whose owner is dead (no heartbeat for
  `node_rows.LEASE_SECONDS`), draining, stopped or none, one compare-and-set each, and
  resumes them from their snapshots (`Dispatcher.adopt`): after a ``kill -9`` of their owner
  they go on within the lease time plus one beat;
- acts on the cancels other nodes left for its tasks (`node_rows.cancels_for`);
- when its row says ``draining`` (`server-shim node drain NAME`), stops driving its tasks
  without failing them (`Dispatcher.let_go`), lets go of them in the database and of its
  machine links, marks itself stopped and asks the server to stop.

A node that cannot renew its lease for `LEASE_SECONDS` lets go of its tasks as well: the
others have taken them by then, and its writes would be refused anyway (`save_owned`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from server_shim.dispatch.dispatcher import Dispatcher
from server_shim.dispatch.fleet import Fleet
from server_shim.store import node_rows, task_rows
from server_shim.store.database import Database, schema_version
from tentacle.common.logs import event

log = logging.getLogger("server_shim.dispatch.nodes")
BEAT_SECONDS = 2.0


class Node:
    """This server's node: its name, its lease and the loop that keeps it."""

    def __init__(self, name: str, db: Database, dispatcher: Dispatcher, fleet: Fleet) -> None:
        self.name, self.db = name, db
        self.dispatcher, self.fleet = dispatcher, fleet
        self.on_stopped: Callable[[], None] = lambda: None  # the server stops when drained
        self.last_beat = time.monotonic()
        self.state = "running"

    async def register(self, api_url: str, polling_url: str) -> None:
        """Write this node's row (running) and forget the links of its previous life."""
        version = await self.db.run(schema_version)
        await self.db.run(node_rows.register, self.name, api_url, polling_url, version)
        self.last_beat = time.monotonic()
        event(log, "node.registered", node=self.name, schema=version)

    async def loop(self) -> None:
        """Beat, take over, cancel, drain: forever (until cancelled or drained)."""
        while self.state != "stopped":
            try:
                await self.once()
            except Exception as exc:
                event(log, "node.beat_failed", logging.WARNING, node=self.name, reason=str(exc))
                if time.monotonic() - self.last_beat > node_rows.LEASE_SECONDS and self.dispatcher.runs:
                    event(log, "node.lease_expired", logging.ERROR, node=self.name)
                    self.dispatcher.let_go()
            await asyncio.sleep(BEAT_SECONDS)

    async def once(self) -> None:
        """One beat and what follows it."""
        agents = len(self.fleet.polling) + len(self.fleet.online_listening)
        state = await self.db.run(node_rows.beat, self.name, agents)
        self.last_beat = time.monotonic()
        if state == "draining":
            await self.drain()
            return
        await self.take_over()
        for task_id, reason in await self.db.run(node_rows.cancels_for, self.name):
            await self.dispatcher.cancel(task_id, reason)

    async def take_over(self) -> None:
        """Claim and resume the tasks no live node owns."""
        for task_id, owner in await self.db.run(node_rows.orphans, self.name):
            if await self.db.run(node_rows.claim, task_id, owner, self.name):
                record = await self.db.run(task_rows.get, task_id)
                event(log, "node.took_over", node=self.name, task=task_id, previous=owner or "")
                self.dispatcher.adopt(record)
        await self.dispatcher.schedule()

    async def drain(self) -> None:
        """Hand every task to the other nodes without failing any, then stop."""
        self.dispatcher.let_go()
        released = await self.db.run(node_rows.release_all, self.name)
        self.state = "stopped"
        event(log, "node.drained", node=self.name, tasks=released)
        self.on_stopped()

    async def stop(self) -> None:
        """A graceful stop: the node's row says stopped, so the others take its tasks at once."""
        if self.state != "stopped":
            self.state = "stopped"
            await self.db.run(node_rows.set_state, self.name, "stopped")
