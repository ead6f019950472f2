"""The blocking-callback watch (tests/loop_watch.py) names the project's blocking code, not a test's."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from server_shim.store.database import Database
from tests.conftest import WATCH


def _slow(conn: sqlite3.Connection) -> None:
    time.sleep(0.2)


async def _idle_turn() -> None:
    """Let the loop run the callbacks scheduled so far."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_project_callback_that_blocks_is_named_with_its_line(tmp_path: Path) -> None:
    """A callback in server_shim/ that holds the loop 200 ms is reported with file, line and duration."""
    db = Database(tmp_path / "db.sqlite")
    try:
        asyncio.get_running_loop().call_soon(db.sync, _slow)
        await _idle_turn()
    finally:
        db.close()
    found = WATCH.take()  # taken here, so the watch's own check after this test passes
    assert len(found) == 1, found
    text = str(found[0])
    assert "server_shim/store/database.py:" in text and " sync" in text, text
    assert 0.2 <= found[0].seconds < 2, text


async def test_a_test_that_blocks_its_own_loop_is_its_own_business() -> None:
    """A test's own blocking call (here time.sleep) is not held against the project."""
    time.sleep(0.2)  # noqa: ASYNC251  # blocking the loop is the case under test
    await _idle_turn()
    assert WATCH.take() == []
