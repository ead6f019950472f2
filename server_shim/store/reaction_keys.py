"""Short-lived API keys for reaction scripts: one space, one delivery, a few minutes.

A script run by a reaction gets a key in ``SERVER_SHIM_API_KEY`` so that it can call the
API (create a release, deploy). The key opens only routes of the reaction's space
(``/api/{space}/...``), and there it may read reactions but not change them (a script cannot
make itself a new one); it expires shortly after the script's time limit, is deleted when
the script ends, and is stored hashed like every other key. Errors::

    KeyOutsideSpace   403   a reaction's key used outside its space, or to change a reaction
"""

from __future__ import annotations

import secrets
import sqlite3
import time

from server_shim.store.accounts import digest
from tentacle.errors import Forbidden

PREFIX = "API-R-"


class KeyOutsideSpace(Forbidden):
    """A reaction's key opens its own space's routes only."""


def create(conn: sqlite3.Connection, space: str, reaction: str, delivery_id: str, ttl: float) -> str:
    """A new key for the script of this delivery, valid for ``ttl`` seconds (expired ones go now)."""
    now = time.time()
    conn.execute("DELETE FROM reaction_keys WHERE expires_at < ?", (now,))
    key = PREFIX + secrets.token_urlsafe(30)
    conn.execute(
        "INSERT INTO reaction_keys (key_hash, space, reaction, delivery_id, expires_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (digest(key), space, reaction, delivery_id, now + ttl),
    )
    return key


def revoke(conn: sqlite3.Connection, key: str) -> None:
    """The script ended: its key stops working."""
    conn.execute("DELETE FROM reaction_keys WHERE key_hash = ?", (digest(key),))


def check(conn: sqlite3.Connection, key: str, method: str, path: str) -> str | None:
    """The name to log for a valid reaction key used on ``path``; None when ``key`` is not one.

    Raises `KeyOutsideSpace` for a valid key on a route of another space (or of no space), or
    on one that changes a reaction.
    """
    if not key.startswith(PREFIX):
        return None
    row = conn.execute(
        "SELECT space, reaction FROM reaction_keys WHERE key_hash = ? AND expires_at >= ?",
        (digest(key), time.time()),
    ).fetchone()
    if row is None:
        return None
    parts = path.split("/")
    if len(parts) < 5 or parts[1] != "api" or parts[2] != row["space"]:
        raise KeyOutsideSpace(
            f"this key belongs to reaction {row['reaction']!r}: it opens routes of space {row['space']!r}"
            " only",
            details={"space": row["space"]},
        )
    if parts[3] == "reactions" and method not in ("GET", "HEAD"):
        raise KeyOutsideSpace(f"a reaction's key may not change reactions ({method} {path[:200]})")
    return f"reaction:{row['reaction']}"
