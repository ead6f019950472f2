"""Task counts (server_shim.store.task_counts): every task list's totalCount stays the table's COUNT(*).

The property test and the migration's backfill run on the backend the run chose
(``db_location``); the concurrency test needs several writers on one PostgreSQL database
and takes the run's cluster whatever the backend.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rigs.pgcluster import Cluster
from server_shim.store import dialects, list_rows, node_rows, task_counts
from server_shim.store import task_rows as tasks
from server_shim.store.database import MIGRATIONS, Database
from server_shim.store.task_rows import TaskRecord

STATES = ("queued", "running", "success", "failed", "cancelled")
SPACES = ("Default", "Other")
PROJECTS = ("Shop", "Web", 'Quote "d" ✓')


def _record(task_id: str, space: str, project: str, created_at: float) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        space=space,
        kind="deployment" if len(task_id) % 2 else "runbook",
        project=project,
        release_version="1.0.0",
        runbook=None,
        environment="Dev",
        state="queued",
        error=None,
        created_at=created_at,
        finished_at=None,
        plans={},
        coordinator={},
    )


def _truth(conn: Any, space: str, state: str | None, project: str | None) -> int:
    sql, params = "SELECT COUNT(*) FROM tasks WHERE space = ?", [space]
    if state:
        sql, params = sql + " AND state = ?", [*params, state]
    if project:
        sql, params = sql + " AND project = ?", [*params, project]
    return int(conn.execute(sql, params).fetchone()[0])


def _every_total_is_the_table(conn: Any) -> None:
    """Each list's totalCount (database-built and Python-built) against a COUNT(*) of the table."""
    for space in (*SPACES, "Empty"):
        space_total = task_counts.count(conn, space)
        assert tasks.page(conn, space, 0, 1)[0] == space_total == _truth(conn, space, None, None)
        for state in (None, *STATES):
            for project in (None, *PROJECTS, "Nobody"):
                query = list_rows.tasks_query(space, 0, 1, state, project, None)
                built = json.loads(list_rows.page_json(conn, list_rows.TASK_FIELDS, query))
                python = json.loads(list_rows.page_python(conn, list_rows.TASK_FIELDS, query))
                expected = _truth(conn, space, state, project)
                assert built["totalCount"] == python["totalCount"] == expected, (space, state, project)
    assert task_counts.drift(conn) == []


def _random_step(conn: Any, chooser: random.Random, number: int) -> None:
    """One change of a random kind, made the way the server makes it where it makes it at all."""
    ids = [row[0] for row in conn.execute("SELECT task_id FROM tasks ORDER BY task_id")]
    action = chooser.choice(["create", "create", "move", "move", "move", "same", "delete", "project"])
    if action == "create" or not ids:
        record = _record(f"T-{number}", chooser.choice(SPACES), chooser.choice(PROJECTS), 1000.0 + number)
        tasks.insert(conn, record)
        return
    task_id = chooser.choice(ids)
    if action == "move":  # the dispatcher's write: its own node's lease, then the state
        conn.execute("UPDATE tasks SET owner = 'node-a' WHERE task_id = ?", (task_id,))
        node_rows.save_owned(conn, task_id, "node-a", chooser.choice(STATES), None, {"n": number})
    elif action == "same":  # a snapshot saved again in the state the task is in: no count moves
        state = conn.execute("SELECT state FROM tasks WHERE task_id = ?", (task_id,)).fetchone()[0]
        tasks.save_progress(conn, task_id, state, None, {"again": number})
    elif action == "delete":  # no route deletes tasks yet: a clean-up's SQL must be counted too
        conn.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))
    else:
        conn.execute("UPDATE tasks SET project = ? WHERE task_id = ?", (chooser.choice(PROJECTS), task_id))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_totals_equal_the_table_after_random_changes(db_location: Path | str, seed: int) -> None:
    """After any mix of creates, state changes, re-saves, project moves and deletes, every
    task list's totalCount (each space, state and project filter) is a COUNT(*) of the table."""
    db = Database(db_location)
    chooser = random.Random(seed)
    try:
        for round_ in range(6):
            for step in range(25):
                # some steps alone, some several to a transaction (the server's group commit)
                db.sync(lambda conn, r=round_, s=step: _random_step(conn, chooser, r * 100 + s))
            db.sync(_every_total_is_the_table)
        assert db.sync(lambda conn: conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]) > 10
    finally:
        db.close()


def _migration_index() -> int:
    return next(
        i
        for i, step in enumerate(MIGRATIONS)
        if "CREATE TABLE task_counts" in str(getattr(step, "sqlite", ""))
    )


def test_the_migration_counts_the_tasks_already_there(
    db_location: Path | str, request: pytest.FixtureRequest
) -> None:
    """A database with tasks from before the counts table gets them counted as it is migrated."""
    before = MIGRATIONS[: _migration_index()]
    location = db_location
    if dialects.is_postgresql(db_location):  # the fixture's database is migrated: one afresh
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        location = cluster.create_database(f"before{time.monotonic_ns()}")
        conn: Any = dialects.connect_postgresql(str(location), before)
    else:
        conn = dialects.connect(Path(db_location), before)
    conn.execute("BEGIN")
    for n in range(30):
        tasks.insert(conn, _record(f"Old-{n}", SPACES[n % 2], PROJECTS[n % 3], 500.0 + n))
    conn.execute("UPDATE tasks SET state = 'success' WHERE created_at < 510")
    conn.execute("COMMIT")
    conn.close()
    db = Database(location)
    try:
        assert db.sync(lambda conn: task_counts.count(conn, "Default", "success")) == 5
        db.sync(_every_total_is_the_table)
    finally:
        db.close()


def _hammer(url: str, worker: int, rounds: int, errors: list[BaseException]) -> None:
    """One node's writes: tasks of two hot projects created, moved and deleted, several to a
    transaction in random order; any error (a deadlock, say) is kept for the test to show."""
    db = Database(url)
    chooser = random.Random(worker)
    try:
        for n in range(rounds):
            ids = [f"W{worker}-{n}-{k}" for k in range(3)]
            db.sync(lambda conn, ids=ids, n=n: _create_all(conn, ids, n))
            for state in ("running", chooser.choice(("success", "failed", "cancelled"))):
                moves = [(task_id, state) for task_id in ids]
                chooser.shuffle(moves)
                db.sync(lambda conn, moves=moves: _move_all(conn, moves))
            if n % 4 == 0:
                db.sync(
                    lambda conn, gone=ids[0]: conn.execute("DELETE FROM tasks WHERE task_id = ?", (gone,))
                )
    except BaseException as exc:
        errors.append(exc)
    finally:
        db.close()


def _create_all(conn: Any, ids: list[str], n: int) -> None:
    for task_id in ids:
        tasks.insert(conn, _record(task_id, "Default", PROJECTS[n % 2], time.time()))


def _move_all(conn: Any, moves: list[tuple[str, str]]) -> None:
    for task_id, state in moves:
        tasks.save_progress(conn, task_id, state, None, {})


def test_totals_stay_exact_with_writers_at_once_on_postgresql(pg_cluster: Cluster) -> None:
    """Four connections writing the same projects' tasks at once (creates, moves, deletes, in
    transactions of several, deployments and runbook runs) never deadlock on the count rows and
    leave every count equal to the table: no increment is lost."""
    url = pg_cluster.create_database(f"counts{time.monotonic_ns()}")
    Database(url).close()
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_hammer, args=(url, w, 25, errors)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert errors == [] and not any(t.is_alive() for t in threads)
    db = Database(url)
    try:
        assert db.sync(lambda conn: task_counts.count(conn, "Default")) == 4 * 25 * 3 - 4 * 7
        db.sync(_every_total_is_the_table)
    finally:
        db.close()


def test_rebuild_restores_counts_that_were_lost(db_location: Path | str) -> None:
    """`rebuild` counts the table again: counts emptied by hand come back exact."""
    db = Database(db_location)
    try:
        for n in range(12):
            db.sync(tasks.insert, _record(f"R-{n}", "Default", PROJECTS[n % 3], 100.0 + n))
        db.sync(lambda conn: conn.execute("DELETE FROM task_counts"))
        assert len(db.sync(task_counts.drift)) == 3
        assert db.sync(task_counts.rebuild) == 3
        db.sync(_every_total_is_the_table)
    finally:
        db.close()


def test_the_postgresql_trigger_takes_the_event_order_lock() -> None:
    """The migration names the events' advisory lock by its number: the two must stay one lock."""
    step = MIGRATIONS[_migration_index()]
    assert f"pg_advisory_xact_lock({dialects.EVENT_ORDER_LOCK})" in str(getattr(step, "postgresql", ""))
