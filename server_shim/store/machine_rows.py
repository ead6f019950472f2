"""Registered machines in the database: insert, find, list, revoke.

A machine is identified on the wire by its certificate's thumbprint; removing a
machine records that thumbprint as revoked, so that its certificate (still signed
by our CA) is refused forever after, even if the machine registers again with a
new one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from tentacle.errors import Conflict, NotFound


class MachineConflict(Conflict):
    """A machine of that name exists and --force was not given."""


class MachineNotFound(NotFound):
    """No machine of that name."""


class NotListening(Conflict):
    """A port was reported for a machine the server does not connect to (a polling one)."""


@dataclass(frozen=True)
class Machine:
    """One registered tentacle."""

    space: str
    name: str
    thumbprint: str
    certificate: str
    mode: str
    endpoint: str | None
    environments: tuple[str, ...]
    roles: tuple[str, ...]
    registered_at: float
    last_seen: float | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Machine:
        """Build from a ``machines`` row."""
        values = dict(row)
        values["environments"] = tuple(json.loads(values["environments"]))
        values["roles"] = tuple(json.loads(values["roles"]))
        return cls(**values)


def insert(conn: sqlite3.Connection, machine: Machine, *, force: bool) -> None:
    """Record a new machine; with `force`, replace (and revoke) one of the same name."""
    existing = find(conn, machine.space, machine.name)
    if existing is not None:
        if not force:
            raise MachineConflict(
                f"name: a machine named {machine.name!r} is already registered;"
                " register with --force to replace it"
            )
        revoke(conn, machine.space, machine.name)
    conn.execute(
        "INSERT INTO machines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            machine.space,
            machine.name,
            machine.thumbprint,
            machine.certificate,
            machine.mode,
            machine.endpoint,
            json.dumps(machine.environments),
            json.dumps(machine.roles),
            machine.registered_at,
            machine.last_seen,
        ),
    )


def find(conn: sqlite3.Connection, space: str, name: str) -> Machine | None:
    """The machine named `name`, or None."""
    row = conn.execute("SELECT * FROM machines WHERE space = ? AND name = ?", (space, name)).fetchone()
    return None if row is None else Machine.from_row(row)


def by_name(conn: sqlite3.Connection, name: str) -> Machine | None:
    """The machine named `name` in any space (names are unique where tasks use them)."""
    row = conn.execute("SELECT * FROM machines WHERE name = ?", (name,)).fetchone()
    return None if row is None else Machine.from_row(row)


def by_thumbprint(conn: sqlite3.Connection, thumbprint: str) -> Machine | None:
    """The machine holding the certificate with this thumbprint, or None."""
    row = conn.execute("SELECT * FROM machines WHERE thumbprint = ?", (thumbprint,)).fetchone()
    return None if row is None else Machine.from_row(row)


def is_revoked(conn: sqlite3.Connection, thumbprint: str) -> bool:
    """Whether this certificate belonged to a removed machine."""
    row = conn.execute("SELECT 1 FROM revoked_certificates WHERE thumbprint = ?", (thumbprint,))
    return row.fetchone() is not None


def revoked_certificates(conn: sqlite3.Connection) -> list[tuple[str, float]]:
    """(certificate PEM, revoked at) of every revoked certificate that was kept."""
    rows = conn.execute(
        "SELECT certificate, revoked_at FROM revoked_certificates"
        " WHERE certificate IS NOT NULL ORDER BY revoked_at"
    )
    return [(str(row["certificate"]), float(row["revoked_at"])) for row in rows]


def listing(conn: sqlite3.Connection, space: str) -> list[Machine]:
    """Every machine of the space, by name."""
    rows = conn.execute("SELECT * FROM machines WHERE space = ? ORDER BY name", (space,))
    return [Machine.from_row(row) for row in rows]


def revoke(conn: sqlite3.Connection, space: str, name: str) -> Machine:
    """Remove the machine and revoke its certificate."""
    machine = find(conn, space, name)
    if machine is None:
        raise MachineNotFound(f"machine {name!r} does not exist in space {space!r}")
    conn.execute(
        "INSERT OR REPLACE INTO revoked_certificates (thumbprint, machine_name, revoked_at, certificate)"
        " VALUES (?, ?, ?, ?)",
        (machine.thumbprint, name, time.time(), machine.certificate),
    )
    conn.execute("DELETE FROM machines WHERE space = ? AND name = ?", (space, name))
    return machine


def move_port(conn: sqlite3.Connection, thumbprint: str, port: int) -> Machine:
    """Point the listening machine holding this certificate at another port of its registered host.

    Only the port changes: a certificate's holder may say where it listens, not send the
    server's connections to another host.
    """
    machine = by_thumbprint(conn, thumbprint)
    if machine is None:
        raise MachineNotFound(f"certificate {thumbprint} is not a registered machine's")
    if machine.mode != "listening" or machine.endpoint is None:
        raise NotListening(f"machine {machine.name!r} polls; only a listening machine has a port")
    host = urlsplit(machine.endpoint).hostname or ""
    endpoint = f"https://{f'[{host}]' if ':' in host else host}:{port}"
    conn.execute("UPDATE machines SET endpoint = ? WHERE thumbprint = ?", (endpoint, thumbprint))
    return replace(machine, endpoint=endpoint)


def save_last_seen(conn: sqlite3.Connection, seen: dict[str, float]) -> None:
    """Persist when machines were last heard from (batched by the fleet)."""
    conn.executemany(
        "UPDATE machines SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE name = ?",
        [(stamp, name) for name, stamp in seen.items()],
    )
