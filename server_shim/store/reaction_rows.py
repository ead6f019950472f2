"""Reactions in the database: store, read, list, delete; which reactions an event may set off.

A reaction is its validated document (tentacle.protocol.reactions), stored normalized
without its secret. The secret of an http action is write-only: it lives in its own
column, is never shown (a reaction's view says only ``hasSecret``), and a PUT that leaves
``secret`` out keeps the stored one (``null`` removes it), so that what a GET shows can be
PUT back without losing it. Errors::

    ReactionNotFound   404   no reaction of that name in the space
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import time
from dataclasses import dataclass

import msgspec
from msgspec import UNSET

from server_shim.store import sealing
from tentacle.errors import NotFound
from tentacle.protocol.reactions import Reaction, Trigger
from tentacle.protocol.wire import decode, encode

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")  # reaction names go in URLs


class ReactionNotFound(NotFound):
    """No reaction of that name in the space."""


@dataclass(frozen=True)
class StoredReaction:
    """A reaction as stored: its document (without the secret) and the secret, if any."""

    space: str
    name: str
    reaction: Reaction
    secret: str | None
    created_at: float
    updated_at: float


def put(conn: sqlite3.Connection, space: str, name: str, reaction: Reaction) -> bool:
    """Create or replace the reaction; True when it was created. See the module for the secret."""
    row = conn.execute("SELECT secret FROM reactions WHERE space = ? AND name = ?", (space, name)).fetchone()
    secret: str | None = None if row is None else row["secret"]
    http = reaction.action.http
    if http is not None and http.secret is not UNSET:
        secret = http.secret
    elif http is None:
        secret = None
    now = time.time()
    conn.execute(
        "INSERT INTO reactions (space, name, document, webhook, secret, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (space, name) DO UPDATE SET"
        " document = excluded.document, webhook = excluded.webhook, secret = excluded.secret,"
        " updated_at = excluded.updated_at",
        (
            space,
            name,
            _document(reaction, name),
            int(reaction.trigger.webhook),
            None if secret is None else sealing.seal_value(conn, secret),  # sealed at rest
            now,
            now,
        ),
    )
    return row is None


def _document(reaction: Reaction, name: str) -> str:
    """The stored text: the document with its name and without its secret."""
    action = reaction.action
    if action.http is not None:
        action = msgspec.structs.replace(action, http=msgspec.structs.replace(action.http, secret=UNSET))
    return encode(msgspec.structs.replace(reaction, action=action, name=name)).decode()


@functools.lru_cache(maxsize=1024)
def parsed_document(document: str) -> Reaction:
    """A stored document's reaction, parsed once per text (every event reads them)."""
    return decode(document, Reaction)


def _from_row(conn: sqlite3.Connection, row: sqlite3.Row) -> StoredReaction:
    secret = row["secret"]
    return StoredReaction(
        row["space"],
        row["name"],
        parsed_document(row["document"]),
        None if secret is None else sealing.open_value(conn, secret),
        row["created_at"],
        row["updated_at"],
    )


def get(conn: sqlite3.Connection, space: str, name: str) -> StoredReaction:
    """The reaction, or ReactionNotFound."""
    row = conn.execute("SELECT * FROM reactions WHERE space = ? AND name = ?", (space, name)).fetchone()
    if row is None:
        raise ReactionNotFound(f"reaction {name!r} does not exist in space {space!r}")
    return _from_row(conn, row)


def find(conn: sqlite3.Connection, space: str, name: str) -> StoredReaction | None:
    """The reaction, or None."""
    row = conn.execute("SELECT * FROM reactions WHERE space = ? AND name = ?", (space, name)).fetchone()
    return None if row is None else _from_row(conn, row)


def listing(conn: sqlite3.Connection, space: str) -> list[StoredReaction]:
    """Every reaction of the space, by name."""
    rows = conn.execute("SELECT * FROM reactions WHERE space = ? ORDER BY name", (space,))
    return [_from_row(conn, row) for row in rows]


def delete(conn: sqlite3.Connection, space: str, name: str) -> None:
    """Remove the reaction, with its deliveries (waiting ones are not sent)."""
    get(conn, space, name)
    conn.execute("DELETE FROM reactions WHERE space = ? AND name = ?", (space, name))


def event_triggers(conn: sqlite3.Connection, space: str | None) -> list[tuple[str, str, Trigger]]:
    """(space, name, trigger) of every event-triggered reaction an event of ``space`` may set off.

    An event of no space (a package of the built-in feed) concerns every space.
    """
    if space is None:
        rows = conn.execute("SELECT space, name, document FROM reactions WHERE webhook = 0")
    else:
        rows = conn.execute(
            "SELECT space, name, document FROM reactions WHERE space = ? AND webhook = 0", (space,)
        )
    return [(row["space"], row["name"], parsed_document(row["document"]).trigger) for row in rows]


def shown_document(stored: StoredReaction) -> dict[str, object]:
    """The document as a GET shows it: the stored one (no secret), plus ``hasSecret`` on an http action."""
    document: dict[str, object] = json.loads(_document(stored.reaction, stored.name))
    action = document["action"]
    if isinstance(action, dict) and isinstance(action.get("http"), dict):
        action["http"]["hasSecret"] = stored.secret is not None
    return document
