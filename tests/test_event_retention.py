"""Events and finished deliveries older than `[events] keep_days` go; pending deliveries stay."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from server_shim.dispatch import retention
from server_shim.dispatch.retention import Retention
from server_shim.server_config import Events
from server_shim.store import events
from server_shim.store.database import Database

DAY = 86400.0
NOW = 2_000_000_000.0


def _deliver(conn: sqlite3.Connection, delivery_id: str, state: str, finished_at: float | None) -> None:
    conn.execute(
        "INSERT INTO deliveries (delivery_id, space, reaction, event_seq, kind, payload, state, attempts,"
        " created_at, next_at, finished_at) VALUES (?, 'Default', 'hook', NULL, 'test', '{}', ?, 1, ?, ?, ?)",
        (delivery_id, state, NOW - 200 * DAY, NOW - 200 * DAY, finished_at),
    )
    conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempt, time, status, duration, log)"
        " VALUES (?, 1, ?, ?, 0.1, '')",
        (delivery_id, NOW - 200 * DAY, "retrying" if state == "pending" else state),
    )


def _history(conn: sqlite3.Connection) -> None:
    """Events of 100 and 10 days ago; deliveries ended then, and one still pending since long ago."""
    for age in (100, 100, 10):
        seq = events.record(conn, "packagePushed", None).seq
        conn.execute("UPDATE events SET time = ? WHERE seq = ?", (NOW - age * DAY, seq))
    conn.execute(
        "INSERT INTO reactions (space, name, document, webhook, secret, created_at, updated_at)"
        " VALUES ('Default', 'hook', '{}', 0, NULL, ?, ?)",
        (NOW, NOW),
    )
    _deliver(conn, "old-done", "succeeded", NOW - 100 * DAY)
    _deliver(conn, "old-failed", "failed", NOW - 95 * DAY)
    _deliver(conn, "recent", "succeeded", NOW - 10 * DAY)
    _deliver(conn, "waiting", "pending", None)


def _left(conn: sqlite3.Connection) -> tuple[list[float], list[str], list[str]]:
    times = [row[0] for row in conn.execute("SELECT time FROM events ORDER BY seq")]
    deliveries = [row[0] for row in conn.execute("SELECT delivery_id FROM deliveries ORDER BY seq")]
    attempts = [
        row[0] for row in conn.execute("SELECT delivery_id FROM delivery_attempts ORDER BY delivery_id")
    ]
    return times, deliveries, attempts


async def test_old_events_and_ended_deliveries_go_in_batches(
    db_location: Path | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """90 days kept: the 100-day-old events and ended deliveries go (attempts with them), the
    rest stays, a pending delivery included; a batch smaller than what is due takes several."""
    monkeypatch.setattr(retention, "BATCH", 1)
    db = Database(db_location)
    try:
        db.sync(_history)
        assert await Retention(db, 90).once(NOW) == 4  # two events, two deliveries
        times, deliveries, attempts = db.sync(_left)
        assert times == [NOW - 10 * DAY]
        assert deliveries == ["recent", "waiting"]
        assert attempts == ["recent", "waiting"]
        assert await Retention(db, 90).once(NOW) == 0
        assert await Retention(db, 0).once(NOW + 1000 * DAY) == 0  # 0 keeps everything forever
        assert db.sync(_left) == (times, deliveries, attempts)
    finally:
        db.close()


def test_keep_days_is_checked() -> None:
    """A negative or absurd retention is a configuration error naming the key."""
    for bad in (-1.0, 40000.0):
        with pytest.raises(ValueError, match=r"events\.keep_days"):
            Events(keep_days=bad)
    assert Events().keep_days == 90.0
