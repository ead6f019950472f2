"""The database thread runs waiting calls together: one transaction, a savepoint each."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from server_shim.store.database import Database, is_integrity_error


def _add(conn: sqlite3.Connection, name: str) -> str:
    conn.execute("INSERT INTO spaces (name, space_id, created_at) VALUES (?, ?, 0)", (name, f"id-{name}"))
    return name


def _add_then_fail(conn: sqlite3.Connection, name: str) -> str:
    _add(conn, name)
    raise ValueError(f"{name} refused")


def _names(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM spaces ORDER BY name")]


async def test_a_failing_call_in_a_batch_undoes_only_itself(db_location: Path | str) -> None:
    """Calls queued behind a busy thread share a batch; one that raises leaves no trace, the rest commit."""
    db = Database(db_location)
    gate = threading.Event()
    try:
        blocker = asyncio.ensure_future(db.run(lambda conn: gate.wait(10)))
        await asyncio.sleep(0.05)  # the database thread is now inside the blocker's batch
        queued = [db.run(_add, "A"), db.run(_add_then_fail, "B"), db.run(_add, "C"), db.run(_add, "A")]
        waiting = asyncio.gather(*queued, return_exceptions=True)
        await asyncio.sleep(0.05)
        gate.set()
        assert await blocker is True
        first, failed, third, duplicate = await waiting
        assert (first, third) == ("A", "C")
        assert isinstance(failed, ValueError) and str(failed) == "B refused"
        assert isinstance(duplicate, BaseException) and is_integrity_error(
            duplicate
        )  # saw A's uncommitted row: same transaction
        assert db.sync(_names) == ["A", "C", "Default"]
    finally:
        db.close()


async def test_a_lone_call_runs_and_answers_as_before(db_location: Path | str) -> None:
    """Without a queue a call is its own batch: its result, or its exception with nothing stored."""
    db = Database(db_location)
    try:
        assert await db.run(_add, "X") == "X"
        with pytest.raises(ValueError, match="Y refused"):
            await db.run(_add_then_fail, "Y")
        assert db.sync(_names) == ["Default", "X"]
    finally:
        db.close()


def _refused_at_commit(conn: sqlite3.Connection) -> None:
    """A write that passes its statements but that SQLite refuses at COMMIT (a deferred foreign
    key, standing in for a disk that fills as the transaction is written)."""
    conn.execute("PRAGMA defer_foreign_keys = ON")
    conn.execute(
        "INSERT INTO deliveries (delivery_id, space, reaction, kind, payload, state, attempts, created_at,"
        " next_at) VALUES ('d-1', 'Default', 'no-such-reaction', 'test', '{}', 'pending', 0, 0, 0)"
    )


async def test_a_batch_refused_at_commit_still_answers_its_reads(tmp_path: Path) -> None:
    """When COMMIT fails, nothing of the batch happened; each call then runs alone, so the write
    fails by itself and the reads and other writes batched beside it succeed."""
    db = Database(tmp_path / "server.db")
    gate = threading.Event()
    try:
        blocker = asyncio.ensure_future(db.run(lambda conn: gate.wait(10)))
        await asyncio.sleep(0.05)  # the database thread is now inside the blocker's batch
        queued = [db.run(_names), db.run(_refused_at_commit), db.run(_add, "A"), db.run(_names)]
        waiting = asyncio.gather(*queued, return_exceptions=True)
        await asyncio.sleep(0.05)
        gate.set()
        assert await blocker is True
        before, refused, added, after = await waiting
        assert before == ["Default"] and added == "A" and after == ["A", "Default"]
        assert isinstance(refused, sqlite3.IntegrityError)
        assert db.sync(_names) == ["A", "Default"]
    finally:
        db.close()
