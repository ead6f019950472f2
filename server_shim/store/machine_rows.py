"""Registered machines in the database: insert, find, list, revoke.

A machine is identified on the wire by its certificate's thumbprint; removing a
machine records that thumbprint as revoked, so that its certificate (still signed
by our CA) is refused forever after, even if the machine registers again with a
new one.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from server_shim.store import events
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
    tenants: tuple[str, ...] = ()
    tenant_tags: tuple[str, ...] = ()
    tenanted_deployment: str = "untenanted"  # untenanted | tenanted | both

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Machine:
        """Build from a ``machines`` row (parsed once per distinct row: every deployment reads them)."""
        return _from_values(tuple(row.keys()), tuple(row))

    @property
    def key(self) -> tuple[str, str]:
        """(space, name): what identifies a machine (names are unique within a space only)."""
        return (self.space, self.name)


@functools.lru_cache(maxsize=8192)
def _from_values(keys: tuple[str, ...], row: tuple[object, ...]) -> Machine:
    values = dict(zip(keys, row, strict=True))
    for key in ("environments", "roles", "tenants", "tenant_tags"):
        values[key] = tuple(json.loads(str(values[key])))
    return Machine(**values)  # type: ignore[arg-type]  # the columns are the fields


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
        "INSERT INTO machines (space, name, thumbprint, certificate, mode, endpoint, environments, roles,"
        " registered_at, last_seen, tenants, tenant_tags, tenanted_deployment)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            json.dumps(machine.tenants),
            json.dumps(machine.tenant_tags),
            machine.tenanted_deployment,
        ),
    )
    events.machine_event(conn, "machineRegistered", machine)


def find(conn: sqlite3.Connection, space: str, name: str) -> Machine | None:
    """The machine named `name`, or None."""
    row = conn.execute("SELECT * FROM machines WHERE space = ? AND name = ?", (space, name)).fetchone()
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


def in_environments(conn: sqlite3.Connection, space: str, environments: Sequence[str]) -> list[Machine]:
    """The machines of the space in any of ``environments``, by name (LIKE narrows, JSON decides)."""
    if not environments:
        return []
    likes = " OR ".join("environments LIKE ?" for _ in environments)
    rows = conn.execute(
        f"SELECT * FROM machines WHERE space = ? AND ({likes}) ORDER BY name",  # noqa: S608 - placeholders only
        (space, *(f"%{json.dumps(env)}%" for env in environments)),
    )
    wanted = set(environments)
    return [m for m in (Machine.from_row(row) for row in rows) if wanted & set(m.environments)]


def existing_names(conn: sqlite3.Connection, space: str, names: Sequence[str]) -> set[str]:
    """Which of ``names`` are machines of the space."""
    found: set[str] = set()
    for name in set(names):
        if conn.execute("SELECT 1 FROM machines WHERE space = ? AND name = ?", (space, name)).fetchone():
            found.add(name)
    return found


def revoke(conn: sqlite3.Connection, space: str, name: str) -> Machine:
    """Remove the machine and revoke its certificate."""
    machine = find(conn, space, name)
    if machine is None:
        raise MachineNotFound(f"machine {name!r} does not exist in space {space!r}")
    conn.execute(
        "INSERT INTO revoked_certificates (thumbprint, machine_name, revoked_at, certificate)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (thumbprint) DO UPDATE SET machine_name = excluded.machine_name,"
        " revoked_at = excluded.revoked_at, certificate = excluded.certificate",
        (machine.thumbprint, name, time.time(), machine.certificate),
    )
    conn.execute("DELETE FROM machines WHERE space = ? AND name = ?", (space, name))
    events.machine_event(conn, "machineRemoved", machine)
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


def save_last_seen(conn: sqlite3.Connection, seen: dict[tuple[str, str], float]) -> None:
    """Persist when machines were last heard from (batched by the fleet), by (space, name)."""
    conn.executemany(
        "UPDATE machines SET last_seen = ? WHERE space = ? AND name = ? AND COALESCE(last_seen, 0) < ?",
        [(stamp, space, name, stamp) for (space, name), stamp in seen.items()],
    )
