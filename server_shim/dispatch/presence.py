"""Which node holds a link to which machine, and the ``machineOnline``/``machineOffline`` events.

Each node writes a row per machine it holds a link to (``machine_presence``, in
server_shim.store.node_rows), so that every node's machines list agrees. A machine comes
online when its first link on any node goes up and goes offline when its last one drops:
the row and the event are written in one transaction, so a polling tentacle connected to
three nodes comes online once, and a node that loses it while another holds it records
nothing. Changes of one machine keep their order (calls to the database run in the order
they are made, and `mark` is awaited).
"""

from __future__ import annotations

import logging
import sqlite3

from server_shim.dispatch import books
from server_shim.store import events, node_rows
from server_shim.store import machine_rows as machines
from server_shim.store.database import Database
from tentacle.common.logs import event

log = logging.getLogger("server_shim.dispatch.presence")


class Presence:
    """Writes this node's links to machines, and the events of machines coming and going."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.node = ""  # this node's name: whose links the rows record (set by the server)

    async def mark(
        self, space: str, name: str, up: bool, reason: str | None = None, *, announce: bool = True
    ) -> None:
        """Record that this node holds (or lost) a link to machine ``name`` of ``space``, and the
        event when that changes the machine's state (unless ``announce`` is False: a machine
        removed is announced as removed). A failure is logged; the link goes on."""
        try:
            await books.write(self.db, _record, space, name, self.node, up, reason, announce)
        except Exception as exc:  # the fleet goes on; the row or event is lost, and the log says so
            kind = "machineOnline" if up else "machineOffline"
            event(log, "presence.not_recorded", logging.ERROR, kind=kind, machine=name, reason=str(exc))


def _record(
    conn: sqlite3.Connection, space: str, name: str, node: str, up: bool, reason: str | None, announce: bool
) -> None:
    if not node_rows.present(conn, space, name, node, up) or not announce:
        return
    machine = machines.find(conn, space, name)
    if machine is not None:  # removed meanwhile: machineRemoved said it
        kind = "machineOnline" if up else "machineOffline"
        events.machine_event(conn, kind, machine, {"reason": reason} if reason else None)
