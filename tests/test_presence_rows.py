"""Presence across nodes and the order of events, on the store (both databases)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rigs.pgcluster import Cluster
from server_shim.store import events, node_rows
from server_shim.store.database import Database


def test_a_machine_is_online_from_its_first_link_to_its_last(db_location: Path | str) -> None:
    """Only the first link up and the last link down change the machine's state across nodes."""
    db = Database(db_location)
    try:

        def present(node: str, up: bool) -> bool:
            return db.sync(node_rows.present, "Default", "web-01", node, up)

        assert present("a", True) is True  # first link anywhere: online
        assert present("b", True) is False  # online already, through a
        assert present("a", True) is False  # the same link again changes nothing
        assert present("a", False) is False  # b still holds it
        assert present("a", False) is False  # a link that is not there
        assert present("b", False) is True  # the last link: offline
        assert present("b", True) is True  # and back
    finally:
        db.close()


def _waiting_on_advisory_lock(db: Database) -> bool:
    def waiting(conn: Any) -> bool:
        row = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
        ).fetchone()
        return int(row[0]) > 0

    return db.sync(waiting)


def test_events_become_visible_in_the_order_of_their_numbers(pg_cluster: Cluster) -> None:
    """A second writer waits for the first to commit, so `since=N` never skips a late commit."""
    url = pg_cluster.create_database(f"order{time.monotonic_ns()}")
    first, second, watcher = Database(url), Database(url), Database(url)
    recorded, release = threading.Event(), threading.Event()
    seqs: dict[str, int] = {}

    def hold(conn: Any) -> None:
        seqs["first"] = events.record(conn, "packagePushed", None).seq
        recorded.set()
        assert release.wait(30)  # the transaction stays open until the test lets it commit

    def write_second() -> None:
        seqs["second"] = second.sync(events.record, "packagePushed", None).seq

    holder = threading.Thread(target=first.sync, args=(hold,))
    follower = threading.Thread(target=write_second)
    try:
        holder.start()
        assert recorded.wait(30)
        follower.start()
        deadline = time.monotonic() + 30
        while not _waiting_on_advisory_lock(watcher):
            assert time.monotonic() < deadline, "the second writer never waited for the first"
            time.sleep(0.05)
        assert "second" not in seqs  # nothing of it is visible while the first is open
        release.set()
        holder.join(30)
        follower.join(30)
        assert seqs["first"] < seqs["second"]
        listed = watcher.sync(events.page, "Default", 0, [], 10)
        assert [e.seq for e in listed] == [seqs["first"], seqs["second"]]
    finally:
        release.set()
        holder.join(30)
        follower.join(30)
        for db in (first, second, watcher):
            db.close()
