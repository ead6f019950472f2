"""Machines coming online and going offline, recorded as events.

Whether a machine is online lives in the fleet's memory, not in a table: no transaction
changes it. Each change is recorded in a transaction of its own, queued as it happens,
so the events of one machine keep their order (calls to the database run in the order
they are made). `close` waits a moment for those still queued when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

from server_shim.dispatch import books
from server_shim.store import events
from server_shim.store import machine_rows as machines
from server_shim.store.database import Database
from tentacle.common.logs import event

log = logging.getLogger("server_shim.dispatch.presence")
CLOSE_WAIT = 5.0


class Presence:
    """Records ``machineOnline`` and ``machineOffline``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._writes: set[asyncio.Task[None]] = set()

    def changed(self, kind: str, space: str, name: str, reason: str | None = None) -> None:
        """Record that machine ``name`` of ``space`` came online or went offline (in the background)."""
        write = asyncio.get_running_loop().create_task(self._write(kind, space, name, reason))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def _write(self, kind: str, space: str, name: str, reason: str | None) -> None:
        try:
            await books.write(self.db, _record, kind, space, name, reason)
        except Exception as exc:  # the fleet goes on; the event is lost, and the log says so
            event(log, "presence.not_recorded", logging.ERROR, kind=kind, machine=name, reason=str(exc))

    async def close(self) -> None:
        """Let the writes still queued finish (for at most `CLOSE_WAIT` seconds)."""
        if self._writes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._writes, return_exceptions=True), CLOSE_WAIT)


def _record(conn: sqlite3.Connection, kind: str, space: str, name: str, reason: str | None) -> None:
    machine = machines.find(conn, space, name)
    if machine is not None:  # removed meanwhile: machineRemoved said it
        events.machine_event(conn, kind, machine, {"reason": reason} if reason else None)
