"""Lists built by the database, the schema's numbered migrations, and moving SQLite to PostgreSQL.

The list tests run on the backend the run chose (``--db-backend``); the migration tests
that need PostgreSQL take the run's cluster whatever the backend.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rigs.pgcluster import Cluster
from server_shim import server_config
from server_shim.cli import main as server_cli
from server_shim.store import log_rows, machine_rows, task_counts
from server_shim.store import task_rows as tasks
from server_shim.store.database import MIGRATIONS, Database, schema_version
from server_shim.store.log_rows import Batch, LogRow
from server_shim.store.task_rows import TaskRecord
from tentacle.common.paths import resolve
from tentacle.errors import ConfigError
from tests.conftest import LiveServer, init_argv, shim_command, start_server, stop_server

ALL_STATES = ("success", "failed", "running", "cancelled", "queued")
STEP = {"name": "Hello", "roles": ["web"], "script": {"syntax": "bash", "body": "echo hi"}}


def _task(number: int, project: str, state: str) -> TaskRecord:
    return TaskRecord(
        task_id=f"ServerTasks-{number}",
        space="Default",
        kind="deployment",
        project=project,
        release_version=f"1.0.{number % 3}",
        runbook=None,
        environment="Dev",
        state=state,
        error="it broke" if state == "failed" else None,
        created_at=1_733_100_000.123456 + number,
        finished_at=None if state == "running" else 1_733_100_100.987654 + number,
        plans={},
        coordinator={},
        tenant="Acme" if number % 4 == 0 else None,
    )


async def _fill(live: LiveServer, folder: Path, states: tuple[str, ...] = ALL_STATES) -> None:
    """Projects, releases, machines, tasks and log lines, with nulls, unicode and quotes in them."""
    for name in ("Shop", 'Web "Front" ✓'):
        status, body = await live.api(
            "PUT", f"/api/Default/projects/{name}/v1", {"name": name, "steps": [STEP]}
        )
        assert status in (200, 201), body
        for version in ("1.0.0", "1.1.0", "2.0.0-beta"):
            status, body = await live.api(
                "POST", "/api/Default/releases/create/v1", {"projectName": name, "releaseVersion": version}
            )
            assert status == 201, body
    for name in ("db-01", "web-01", "web-02"):
        live.ca_signed(folder, name, register=True)
    live.server.db.sync(machine_rows.save_last_seen, {("Default", "web-01"): 1_733_100_000.75})
    records = [_task(n, "Shop" if n % 2 else "Other", states[n % len(states)]) for n in range(1, 48)]
    for record in records:
        live.server.db.sync(tasks.insert, record)
    lines: list[LogRow] = [
        (seq, 1_733_100_000.5 + seq / 7, "stdout", "Hello", f'line {seq} \u00e9 "q" \\ \t')
        for seq in range(1, 40)
    ]
    lines.append((40, 1_733_100_001.0, "stderr", None, ""))
    live.server.db.sync(log_rows.store, [Batch("ServerTasks-1", "web-01", lines)], {}, 1 << 20)


async def _both(live: LiveServer, path: str) -> tuple[Any, Any]:
    joiner = "&" if "?" in path else "?"
    status, built = await live.api("GET", path)
    assert status == 200, built
    status, python = await live.api("GET", f"{path}{joiner}render=python")
    assert status == 200, python
    return built, python


LIST_PATHS = [
    "/api/Default/tasks/v1",
    "/api/Default/tasks/v1?take=5&skip=3",
    "/api/Default/tasks/v1?state=failed&take=100",
    "/api/Default/tasks/v1?project=Shop&state=success",
    "/api/Default/tasks/v1?after=ServerTasks-20&take=7",
    "/api/Default/tasks/v1?state=queued&project=Nobody",
    "/api/Default/releases/v1",
    "/api/Default/releases/v1?project=Shop&take=2",
    "/api/Default/projects/v1",
    "/api/Default/machines/v1",
    "/api/Default/machines/v1?skip=1&take=1",
    "/api/Default/tasks/ServerTasks-1/log/v1",
    "/api/Default/tasks/ServerTasks-1/log/v1?since=35",
    "/api/Default/tasks/ServerTasks-2/log/v1",
]


async def test_database_built_lists_equal_the_python_ones(live_server: LiveServer, tmp_path: Path) -> None:
    """Every list and log page the database builds is the same JSON as rows serialized in Python."""
    await _fill(live_server, tmp_path)
    for path in LIST_PATHS:
        built, python = await _both(live_server, path)
        assert built == python, path
    tasks_page, _ = await _both(live_server, "/api/Default/tasks/v1?take=5&skip=3")
    assert tasks_page["totalCount"] == 47 and len(tasks_page["items"]) == 5
    first = tasks_page["items"][0]
    assert first["taskId"] == "ServerTasks-44" and first["createdAt"] == pytest.approx(
        1_733_100_044.123, abs=1e-6
    )
    log, _ = await _both(live_server, "/api/Default/tasks/ServerTasks-1/log/v1")
    assert log["totalCount"] == 40 and log["nextSince"] == log["items"][-1]["seq"] and log["more"] is False
    assert log["items"][0]["text"] == 'line 1 \u00e9 "q" \\ \t' and log["items"][-1]["step"] is None
    machines, _ = await _both(live_server, "/api/Default/machines/v1")
    seen = {m["name"]: m["lastSeen"] for m in machines["items"]}
    assert seen == {"db-01": None, "web-01": "2024-12-02T00:40:00Z", "web-02": None}
    assert {m["status"] for m in machines["items"]} == {"offline"} and machines["items"][0]["roles"] == [
        "web"
    ]


async def test_task_pages_follow_one_another_by_keyset(live_server: LiveServer, tmp_path: Path) -> None:
    """Paging with after=LAST visits every task once, newest first, as skip would."""
    await _fill(live_server, tmp_path)
    seen: list[str] = []
    after = ""
    while True:
        status, page = await live_server.api("GET", f"/api/Default/tasks/v1?take=10&after={after}")
        assert status == 200, page
        if not page["items"]:
            break
        seen += [item["taskId"] for item in page["items"]]
        after = seen[-1]
    assert seen == [f"ServerTasks-{n}" for n in range(47, 0, -1)]


@pytest.mark.parametrize(
    ("query", "field"),
    [("take=0", "take"), ("take=1001", "take"), ("skip=-1", "skip"), ("state=done", "state")],
)
async def test_bad_list_parameters_are_400_naming_them(
    live_server: LiveServer, query: str, field: str
) -> None:
    """A page parameter out of range is refused with the parameter's name."""
    status, body = await live_server.api("GET", f"/api/Default/tasks/v1?{query}")
    assert status == 400 and body["error"]["details"]["field"] == field


async def test_two_nodes_starting_together_migrate_once(pg_cluster: Cluster) -> None:
    """Several processes opening a new database at once apply each migration once (advisory lock)."""
    url = pg_cluster.create_database(f"race{time.monotonic_ns()}")
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Database(url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    applied = pg_cluster.sql(
        "SELECT version, COUNT(*) FROM schema_migrations GROUP BY version ORDER BY version",
        url.rsplit("/", 1)[1],
    )
    assert applied.splitlines() == [f"{n}|1" for n in range(1, len(MIGRATIONS) + 1)]


def test_a_server_older_than_its_database_refuses_to_start(db_location: Path | str) -> None:
    """A node whose code knows fewer migrations than the database has says so and does not start."""
    db = Database(db_location)
    newer = len(MIGRATIONS) + 1
    if db.dialect == "sqlite":
        db.sync(lambda conn: None)
        db.conn.execute(f"PRAGMA user_version = {newer}")
    else:
        db.sync(lambda conn: conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (newer,)))
    db.close()
    with pytest.raises(ConfigError, match=f"schema is version {newer}, newer than this server's"):
        Database(db_location)


async def test_migrate_moves_a_sqlite_server_to_postgresql(tmp_path: Path, pg_cluster: Cluster) -> None:
    """`server-shim migrate --from sqlite:PATH --to URL` copies everything (the task counts rebuilt,
    not doubled by the target's triggers), and the server runs on it."""
    home = tmp_path / "server"
    assert server_cli.main(init_argv(home, "")) == 0
    paths = resolve("server-shim", str(home))
    live = await start_server(paths)
    try:
        await _fill(live, tmp_path, ("success", "failed", "cancelled"))  # nothing to resume
        before = {p: (await _both(live, p))[0] for p in LIST_PATHS if "machines" not in p}
    finally:
        await stop_server(live)
    source = server_config.load(paths).database_location(paths)
    url = pg_cluster.create_database(f"moved{time.monotonic_ns()}")
    argv = ["--home", str(home), "migrate", "--from", f"sqlite:{source}", "--to", url]
    assert await asyncio.to_thread(server_cli.main, argv) == 0
    assert server_config.load(paths).database == url
    moved = Database(url)
    try:
        assert moved.sync(schema_version) == len(MIGRATIONS)
        assert moved.sync(lambda c: c.execute("SELECT COUNT(*) FROM task_log").fetchone()[0]) == 40
        assert moved.sync(task_counts.count, "Default") == 47 and moved.sync(task_counts.drift) == []
    finally:
        moved.close()
    again = await start_server(paths)
    try:
        for path, answer in before.items():
            status, now = await again.api("GET", path)
            assert status == 200 and now == answer, path
    finally:
        await stop_server(again)


def test_init_refuses_a_database_that_holds_a_server(
    tmp_path: Path, pg_cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second `init --database` on the same database stops and points at `node join`."""
    url = pg_cluster.create_database(f"taken{time.monotonic_ns()}")
    assert server_cli.main(init_argv(tmp_path / "one", url)) == 0
    capsys.readouterr()
    assert server_cli.main(init_argv(tmp_path / "two", url)) == 2
    err = capsys.readouterr().err
    assert "already holds a server" in err and "node join" in err
    assert not (tmp_path / "two").exists()


async def test_list_commands_show_the_database_built_pages(live_server: LiveServer, tmp_path: Path) -> None:
    """`task list`, `release list` and `project list` print the list routes' answers, as JSON or a table."""
    await _fill(live_server, tmp_path)
    code, out = await shim_command(live_server, "task", "list", "--state", "failed", "--take", "3", "--json")
    status, answer = await live_server.api("GET", "/api/Default/tasks/v1?state=failed&take=3")
    assert code == 0 and status == 200 and json.loads(out) == answer
    code, out = await shim_command(live_server, "task", "list", "--project", "Shop", "--take", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("ServerTasks-47") and "Shop 1.0.2 -> Dev" in lines[0]
    assert lines[-1] == "(2 of 24); next page: --after ServerTasks-45"
    code, out = await shim_command(live_server, "release", "list", "--project", "Shop")
    assert code == 0 and out.splitlines()[-1] == "(3 of 3)" and "2.0.0-beta" in out
    code, out = await shim_command(live_server, "project", "list", "--json")
    assert code == 0 and [p["name"] for p in json.loads(out)["items"]] == ["Shop", 'Web "Front" ✓']
