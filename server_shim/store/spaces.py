"""Spaces: named partitions of everything a server holds.

Projects, releases, tenants, tag sets, machines, tasks and mirror feeds each belong to one
space, and every query of them names it, so nothing of one space is visible from another
(the same machine name in two spaces is two machines). A space has a name (what routes
and commands take) and a stable id, ``Spaces-N`` (what Octopus's own clients carry, and what
`resolve` takes as well as the name); ids are never reused, and no name has an id's shape,
so the two never mean different spaces. ``Default`` (``Spaces-1``) exists from the start.
Spaces are not deleted.

Errors::

    SpaceNotFound   404   no space of that name
    SpaceExists     409   the name is taken
    SpaceNameError  400   a name that cannot be a space's
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass

from tentacle.errors import Conflict, InvalidInput, NotFound

DEFAULT_SPACE = "Default"
MAX_SPACE_NAME = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_ID = re.compile(r"^Spaces-([0-9]+)\Z")
_ID_SHAPED = re.compile(r"^spaces-[0-9]+\Z", re.IGNORECASE)


class SpaceNotFound(NotFound):
    """No space of that name."""


class SpaceExists(Conflict):
    """A space of that name exists already."""


class SpaceNameError(InvalidInput):
    """A name that cannot be a space's."""


@dataclass(frozen=True)
class Space:
    """One space: its name and its stable id."""

    name: str
    space_id: str
    created_at: float


def shown(name: str) -> str:
    """A name quoted for a message, cut short (messages must not echo megabytes back)."""
    return repr(name if len(name) <= MAX_SPACE_NAME else name[:MAX_SPACE_NAME] + "...")


def check_space_name(name: str) -> str:
    """``name`` when it can name a space: 1-100 letters, digits, '.', '_', '-' (it goes in URLs)."""
    if not _NAME.match(name):
        raise SpaceNameError(
            f"name: space name {shown(name)} must be 1-100 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
            details={"path": "name"},
        )
    if _ID_SHAPED.match(name):
        raise SpaceNameError(
            f"name: {shown(name)} has the shape of a space id (Spaces-N), which routes take as well"
            " as names: choose another name",
            details={"path": "name"},
        )
    return name


def create(conn: sqlite3.Connection, name: str) -> Space:
    """A new space with the next free id; SpaceExists when the name (in any case) is taken."""
    check_space_name(name)
    taken = conn.execute("SELECT name FROM spaces WHERE lower(name) = lower(?)", (name,)).fetchone()
    if taken is not None:
        raise SpaceExists(f"name: space {taken['name']!r} already exists", details={"path": "name"})
    numbers = [
        int(m.group(1))
        for (sid,) in conn.execute("SELECT space_id FROM spaces")
        if (m := _ID.match(sid or ""))
    ]
    space = Space(name, f"Spaces-{max(numbers, default=0) + 1}", time.time())
    conn.execute(
        "INSERT INTO spaces (name, space_id, created_at) VALUES (?, ?, ?)",
        (space.name, space.space_id, space.created_at),
    )
    return space


def listing(conn: sqlite3.Connection) -> list[Space]:
    """Every space, in the order of their ids."""
    rows = conn.execute("SELECT name, space_id, created_at FROM spaces").fetchall()
    spaces = [Space(row["name"], row["space_id"], row["created_at"]) for row in rows]
    return sorted(spaces, key=lambda s: int(m.group(1)) if (m := _ID.match(s.space_id)) else 0)


def exists(conn: sqlite3.Connection, name: str) -> bool:
    """Whether a space of exactly this name exists (a name no space can have is not looked up)."""
    if not _NAME.match(name):
        return False
    return conn.execute("SELECT 1 FROM spaces WHERE name = ?", (name,)).fetchone() is not None


def resolve(conn: sqlite3.Connection, name_or_id: str) -> Space:
    """The space of that name, else of that id (``Spaces-2``); SpaceNotFound naming it otherwise.

    The name is tried first: a space named like an id before names of that shape were
    refused keeps the meaning its name had.
    """
    if _NAME.match(name_or_id):
        query = "SELECT name, space_id, created_at FROM spaces WHERE "
        row = conn.execute(query + "name = ?", (name_or_id,)).fetchone()
        if row is None and _ID.match(name_or_id):
            row = conn.execute(query + "space_id = ?", (name_or_id,)).fetchone()
        if row is not None:
            return Space(row["name"], row["space_id"], row["created_at"])
    shown_name = shown(name_or_id)
    raise SpaceNotFound(f"space {shown_name} does not exist", details={"space": shown_name})


def require(conn: sqlite3.Connection, name: str) -> str:
    """``name`` when that space exists; SpaceNotFound naming it otherwise."""
    if not exists(conn, name):
        raise SpaceNotFound(f"space {shown(name)} does not exist", details={"space": shown(name)})
    return name
