"""The blocking-callback watch (tests/loop_watch.py) names the project's blocking code, not a test's."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from server_shim.store.database import Database
from tests.conftest import WATCH


def _slow(conn: sqlite3.Connection) -> None:
    time.sleep(0.2)


def _hold(conn: sqlite3.Connection, held: threading.Event) -> None:
    held.set()
    time.sleep(0.2)


def _nothing(conn: sqlite3.Connection) -> None:
    del conn


async def _idle_turn() -> None:
    """Let the loop run the callbacks scheduled so far."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_project_callback_that_blocks_is_named_with_its_line(tmp_path: Path) -> None:
    """Project code that holds the loop 200 ms (sync() waiting for its lock) is named, file and line."""
    db = Database(tmp_path / "db.sqlite")
    held = threading.Event()
    try:
        holding = asyncio.ensure_future(db.run(_hold, held))  # the database thread takes the lock
        await asyncio.to_thread(held.wait)
        asyncio.get_running_loop().call_soon(db.sync, _nothing)  # blocks in sync() for the lock
        await _idle_turn()
        await holding
    finally:
        db.close()
    found = WATCH.take()  # taken here, so the watch's own check after this test passes
    assert len(found) == 1, found
    text = str(found[0])
    assert "server_shim/store/database.py:" in text and " sync" in text, text
    assert 0.1 <= found[0].seconds < 2, text


async def test_a_test_that_blocks_its_own_loop_is_its_own_business(tmp_path: Path) -> None:
    """A test's own blocking call, even one the project calls back, is not held against the project."""
    time.sleep(0.2)  # noqa: ASYNC251  # blocking the loop is the case under test
    db = Database(tmp_path / "db.sqlite")
    try:
        db.sync(_slow)  # the project's sync() runs the test's slow function: the test's doing
        await _idle_turn()
    finally:
        db.close()
    assert WATCH.take() == []
