"""The server's database: a SQLite file in WAL mode, or PostgreSQL; schema by numbered migrations.

All access goes through `Database`. The daemon calls it from the event loop with
`await db.run(fn, ...)`, which runs `fn(connection)` on one dedicated thread, so the
loop never blocks on disk and SQLite sees a single writer; calls that wait together
share one transaction (each in its own savepoint) and one commit. Command-line tools call
`db.sync(fn)` directly.

Both databases take the same functions: ``conn.execute(sql, params)`` with ``?``
placeholders, rows by index or by name. For SQLite ``conn`` is a `sqlite3.Connection`; for
PostgreSQL (a ``postgresql://`` URL) it is `server_shim.store.pg_connection.PgConnection`,
which takes the same calls. SQL is written once where the dialects agree (the conventions
say how); the few queries that differ ask `dialect(conn)`.

Migrations are one numbered list for both. A migration is one text, in which PostgreSQL
reads SQLite's INTEGER as BIGINT and REAL as DOUBLE PRECISION (what SQLite stores under
those names), or a `Dialects` pair where the two need different SQL. SQLite records the
number applied in ``PRAGMA user_version``; PostgreSQL in ``schema_migrations``, under an
advisory lock so that nodes starting together migrate once. A server older than its
database refuses to start, saying so.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from server_shim.store import dialects
from server_shim.store.dialects import POSTGRESQL as POSTGRESQL
from server_shim.store.dialects import SQLITE as SQLITE
from server_shim.store.dialects import Dialects as Dialects
from server_shim.store.dialects import dialect as dialect
from server_shim.store.dialects import is_database_error as is_database_error
from server_shim.store.dialects import is_integrity_error as is_integrity_error
from server_shim.store.dialects import is_postgresql as is_postgresql
from server_shim.store.dialects import is_transient as is_transient
from server_shim.store.dialects import redacted as redacted
from server_shim.store.dialects import schema_version as schema_version
from server_shim.store.sealing import Sealer

T = TypeVar("T")
P = ParamSpec("P")

MIGRATIONS: list[str | Dialects] = [
    """
    CREATE TABLE spaces (name TEXT PRIMARY KEY);
    INSERT INTO spaces (name) VALUES ('Default');
    CREATE TABLE api_keys (
        name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY, uses_left INTEGER NOT NULL, expires_at REAL NOT NULL,
        created_at REAL NOT NULL);
    CREATE TABLE machines (
        space TEXT NOT NULL REFERENCES spaces(name), name TEXT NOT NULL,
        thumbprint TEXT NOT NULL UNIQUE, certificate TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('listening', 'polling')), endpoint TEXT,
        environments TEXT NOT NULL, roles TEXT NOT NULL,
        registered_at REAL NOT NULL, last_seen REAL,
        PRIMARY KEY (space, name));
    CREATE TABLE revoked_certificates (
        thumbprint TEXT PRIMARY KEY, machine_name TEXT NOT NULL, revoked_at REAL NOT NULL);
    """,
    """
    CREATE TABLE projects (
        space TEXT NOT NULL REFERENCES spaces(name), name TEXT NOT NULL,
        document TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (space, name));
    CREATE TABLE releases (
        space TEXT NOT NULL, project TEXT NOT NULL, version TEXT NOT NULL,
        process TEXT NOT NULL, packages TEXT NOT NULL, created_at REAL NOT NULL,
        PRIMARY KEY (space, project, version),
        FOREIGN KEY (space, project) REFERENCES projects(space, name) ON DELETE CASCADE);
    CREATE TABLE packages (
        lower_id TEXT NOT NULL, version TEXT NOT NULL, id TEXT NOT NULL,
        sha512 TEXT NOT NULL, size INTEGER NOT NULL, file_name TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (lower_id, version));
    CREATE TABLE feeds (name TEXT PRIMARY KEY, mirrors TEXT NOT NULL, updated_at REAL NOT NULL);
    CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY, space TEXT NOT NULL, kind TEXT NOT NULL,
        project TEXT NOT NULL, release_version TEXT NOT NULL, runbook TEXT,
        environment TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed', 'cancelled')),
        error TEXT, created_at REAL NOT NULL, finished_at REAL,
        plans TEXT NOT NULL, coordinator TEXT NOT NULL);
    CREATE INDEX tasks_by_state ON tasks(state);
    CREATE TABLE task_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL REFERENCES tasks(task_id),
        machine TEXT NOT NULL, machine_seq INTEGER NOT NULL, time REAL NOT NULL,
        stream TEXT NOT NULL, step TEXT, text TEXT NOT NULL,
        UNIQUE (task_id, machine, machine_seq));
    """,
    # Tasks find their targets by name alone (machines.by_name, save_last_seen): without
    # this index each of those scans the table, O(machines) per call to a target.
    """
    CREATE INDEX machines_by_name ON machines(name);
    """,
    # A token may limit the environments and roles a registrant can claim (JSON lists;
    # empty: any). Tokens made before keep their meaning: no limit.
    """
    ALTER TABLE tokens ADD COLUMN environments TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE tokens ADD COLUMN roles TEXT NOT NULL DEFAULT '[]';
    """,
    # The revoked certificate itself, so that `show-crl` can list its serial number for
    # mirrors (rows revoked before this have none and cannot be listed).
    """
    ALTER TABLE revoked_certificates ADD COLUMN certificate TEXT;
    """,
    # The built-in feed as a NuGet server (issue 12). API keys get scopes (a JSON list; the
    # keys made before keep every right, "all"). A package keeps what NuGet clients are
    # shown (catalog: its nuspec's fields and dependency groups, JSON), its version with
    # SemVer 2 metadata, and whether it is a prerelease or SemVer 2 only; NULL marks rows
    # pushed before this, which the server fills in from their files at start. package_ids
    # holds one row per package id for search: its text, and whether any NuGet package of
    # it is visible to each of the four kinds of search (stable or any; SemVer 1 or 2).
    """
    ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '["all"]';
    ALTER TABLE packages ADD COLUMN full_version TEXT;
    ALTER TABLE packages ADD COLUMN catalog TEXT;
    ALTER TABLE packages ADD COLUMN prerelease INTEGER;
    ALTER TABLE packages ADD COLUMN semver2 INTEGER;
    CREATE TABLE package_ids (
        lower_id TEXT PRIMARY KEY, id TEXT NOT NULL, search_text TEXT NOT NULL,
        stable1 INTEGER NOT NULL, any1 INTEGER NOT NULL,
        stable2 INTEGER NOT NULL, any2 INTEGER NOT NULL);
    """,
    # Spaces, tenants and channels (issue 13). A space gets a stable id (Spaces-N) besides
    # its name; mirror feeds move into spaces (the rows before this go to Default). Machines
    # carry tenants, tenant tags and how they take part in tenanted deployments. Tag sets and
    # tenants are per space; a tenant's project/environment links and tags get rows of their
    # own, so that "the tenants of this project" is an index lookup. A release remembers its
    # channel; a task, its tenant and its schedule (epoch seconds). A release is found by its
    # version in any case (NuGet's equality), which without an index on lower(version) scans
    # every release of the project on each create.
    """
    ALTER TABLE spaces ADD COLUMN space_id TEXT;
    ALTER TABLE spaces ADD COLUMN created_at DOUBLE PRECISION NOT NULL DEFAULT 0;
    UPDATE spaces SET space_id = 'Spaces-1' WHERE name = 'Default';
    CREATE UNIQUE INDEX spaces_by_id ON spaces(space_id);
    CREATE TABLE space_feeds (
        space TEXT NOT NULL REFERENCES spaces(name), name TEXT NOT NULL,
        mirrors TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (space, name));
    INSERT INTO space_feeds (space, name, mirrors, updated_at)
        SELECT 'Default', name, mirrors, updated_at FROM feeds;
    DROP TABLE feeds;
    ALTER TABLE machines ADD COLUMN tenants TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE machines ADD COLUMN tenant_tags TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE machines ADD COLUMN tenanted_deployment TEXT NOT NULL DEFAULT 'untenanted';
    CREATE TABLE tag_sets (
        space TEXT NOT NULL REFERENCES spaces(name), name TEXT NOT NULL,
        tags TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (space, name));
    CREATE TABLE tenants (
        space TEXT NOT NULL REFERENCES spaces(name), name TEXT NOT NULL,
        document TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (space, name));
    CREATE TABLE tenant_projects (
        space TEXT NOT NULL, tenant TEXT NOT NULL, project TEXT NOT NULL, environment TEXT NOT NULL,
        PRIMARY KEY (space, tenant, project, environment),
        FOREIGN KEY (space, tenant) REFERENCES tenants(space, name) ON DELETE CASCADE);
    CREATE INDEX tenant_projects_by_project ON tenant_projects(space, project, environment);
    CREATE TABLE tenant_tags (
        space TEXT NOT NULL, tenant TEXT NOT NULL, tag TEXT NOT NULL,
        PRIMARY KEY (space, tenant, tag),
        FOREIGN KEY (space, tenant) REFERENCES tenants(space, name) ON DELETE CASCADE);
    CREATE INDEX tenant_tags_by_tag ON tenant_tags(space, tag);
    ALTER TABLE releases ADD COLUMN channel TEXT NOT NULL DEFAULT 'Default';
    CREATE INDEX releases_by_age ON releases(space, project, created_at);
    CREATE INDEX releases_by_lower_version ON releases(space, project, lower(version));
    CREATE INDEX releases_by_channel ON releases(space, project, channel, created_at);
    ALTER TABLE tasks ADD COLUMN tenant TEXT;
    ALTER TABLE tasks ADD COLUMN run_at DOUBLE PRECISION;
    ALTER TABLE tasks ADD COLUMN no_run_after DOUBLE PRECISION;
    """,
    # Issue 15: a token made for one machine by name (NULL: any new name). Only such a
    # token may replace the machine of that name; tokens made before register new names only.
    """
    ALTER TABLE tokens ADD COLUMN machine TEXT;
    """,
    # Issue 15: facts about the server itself (name -> value), such as whether the sensitive
    # values held before sealing existed have been sealed (server_shim.store.sealing).
    """
    CREATE TABLE server_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # Issue 15: the plan-signing keys (private halves are files in the home) and the key
    # each machine certificate has pinned (no row: none yet, as for machines registered before).
    """
    CREATE TABLE signing_keys (
        key_id TEXT PRIMARY KEY, public_key TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        current INTEGER NOT NULL);
    CREATE TABLE machine_keys (
        thumbprint TEXT PRIMARY KEY, key_id TEXT NOT NULL, pinned_at DOUBLE PRECISION NOT NULL);
    """,
    # Reactions (issue 14). Events are numbered (seq) and written in the transaction of the
    # change they record; a NULL space is the server's own (a package of the built-in feed).
    # Deliveries are the outbox: one row per event and reaction (UNIQUE: matching twice adds
    # nothing), kept in seq order per reaction, claimed by a node for a lease while it sends;
    # each attempt gets a row. A script's short-lived API key lives in reaction_keys.
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, space TEXT, kind TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL, project TEXT, release_version TEXT,
        environments TEXT NOT NULL, tenant TEXT, machine TEXT, task_id TEXT, task_state TEXT,
        roles TEXT NOT NULL, details TEXT NOT NULL);
    CREATE INDEX events_by_space ON events(space, seq);
    CREATE INDEX events_by_kind ON events(space, kind, seq);
    CREATE TABLE reactions (
        space TEXT NOT NULL REFERENCES spaces(name), name TEXT NOT NULL,
        document TEXT NOT NULL, webhook INTEGER NOT NULL, secret TEXT,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (space, name));
    CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, delivery_id TEXT NOT NULL UNIQUE,
        space TEXT NOT NULL, reaction TEXT NOT NULL, event_seq INTEGER, kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
        attempts INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        next_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION,
        claimed_by TEXT, claimed_until DOUBLE PRECISION,
        UNIQUE (space, reaction, event_seq),
        FOREIGN KEY (space, reaction) REFERENCES reactions(space, name) ON DELETE CASCADE);
    CREATE INDEX deliveries_waiting ON deliveries(state, space, reaction, seq);
    CREATE INDEX deliveries_of_reaction ON deliveries(space, reaction, seq);
    CREATE TABLE delivery_attempts (
        delivery_id TEXT NOT NULL REFERENCES deliveries(delivery_id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL, time DOUBLE PRECISION NOT NULL, status TEXT NOT NULL,
        response_code INTEGER, duration DOUBLE PRECISION NOT NULL, error TEXT, log TEXT NOT NULL,
        PRIMARY KEY (delivery_id, attempt));
    CREATE TABLE reaction_keys (
        key_hash TEXT PRIMARY KEY, space TEXT NOT NULL, reaction TEXT NOT NULL,
        delivery_id TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX reaction_keys_by_expiry ON reaction_keys(expires_at);
    """,
    # Several nodes on one database (issue 16). A node row is its lease: a node whose heartbeat
    # is older than the lease time is dead, and another node takes over the running tasks it
    # owns (tasks.owner). machine_presence says which node holds a link to which machine now
    # (a polling websocket, a listening machine that answers its pings), so that every node's
    # machines list shows one status built in the database. A cancel asked of a node that does
    # not own the task waits in tasks.cancel_reason for its owner. The task and log lists page by
    # keyset on these indexes.
    """
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY, api_url TEXT NOT NULL, polling_url TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL, heartbeat DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'draining', 'stopped')),
        agents INTEGER NOT NULL DEFAULT 0, tasks INTEGER NOT NULL DEFAULT 0,
        schema_version INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE machine_presence (
        space TEXT NOT NULL, machine TEXT NOT NULL, node TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (space, machine, node));
    ALTER TABLE tasks ADD COLUMN owner TEXT;
    ALTER TABLE tasks ADD COLUMN cancel_reason TEXT;
    CREATE INDEX tasks_by_owner ON tasks(owner, state);
    CREATE INDEX tasks_by_space_age ON tasks(space, created_at, task_id);
    CREATE INDEX tasks_by_space_state_age ON tasks(space, state, created_at, task_id);
    CREATE INDEX tasks_by_space_project_age ON tasks(space, project, created_at, task_id);
    CREATE INDEX task_log_by_task_seq ON task_log(task_id, seq);
    """,
    # Issue 16: how many tasks each (space, project, state) has, so that a task list's totalCount
    # sums a few rows instead of counting the table (server_shim.store.task_counts). Triggers keep
    # it in the writing transaction, whoever writes: each change adds +1/-1 with an upsert. On
    # PostgreSQL a writer first takes the lock that events take (dialects.EVENT_ORDER_LOCK, held
    # to the commit), so the count rows are locked by one transaction at a time: no deadlock.
    Dialects(
        sqlite="""
    CREATE TABLE task_counts (space TEXT NOT NULL, project TEXT NOT NULL, state TEXT NOT NULL,
        n INTEGER NOT NULL, PRIMARY KEY (space, project, state));
    INSERT INTO task_counts SELECT space, project, state, COUNT(*) FROM tasks GROUP BY space, project, state;
    CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO task_counts VALUES (NEW.space, NEW.project, NEW.state, 1)
            ON CONFLICT (space, project, state) DO UPDATE SET n = n + 1; END;
    CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
        UPDATE task_counts SET n = n - 1
            WHERE space = OLD.space AND project = OLD.project AND state = OLD.state; END;
    CREATE TRIGGER task_counts_update AFTER UPDATE OF space, project, state ON tasks
        WHEN (OLD.space, OLD.project, OLD.state) IS NOT (NEW.space, NEW.project, NEW.state) BEGIN
        UPDATE task_counts SET n = n - 1
            WHERE space = OLD.space AND project = OLD.project AND state = OLD.state;
        INSERT INTO task_counts VALUES (NEW.space, NEW.project, NEW.state, 1)
            ON CONFLICT (space, project, state) DO UPDATE SET n = n + 1; END;
    """,
        postgresql="""
    CREATE TABLE task_counts (space TEXT NOT NULL, project TEXT NOT NULL, state TEXT NOT NULL,
        n BIGINT NOT NULL, PRIMARY KEY (space, project, state));
    INSERT INTO task_counts SELECT space, project, state, COUNT(*) FROM tasks GROUP BY space, project, state;
    CREATE FUNCTION task_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(2118641637);  -- dialects.EVENT_ORDER_LOCK, taken first
        INSERT INTO task_counts AS c (space, project, state, n)
            SELECT * FROM (
                SELECT OLD.space, OLD.project, OLD.state, -1 WHERE TG_OP <> 'INSERT'
                UNION ALL SELECT NEW.space, NEW.project, NEW.state, 1 WHERE TG_OP <> 'DELETE'
            ) AS change (space, project, state, n) ORDER BY space, project, state
            ON CONFLICT (space, project, state) DO UPDATE SET n = c.n + EXCLUDED.n;
        RETURN NULL;
    END $$;
    CREATE TRIGGER task_counts_insert_delete AFTER INSERT OR DELETE ON tasks
        FOR EACH ROW EXECUTE FUNCTION task_counts_follow();
    CREATE TRIGGER task_counts_update AFTER UPDATE OF space, project, state ON tasks FOR EACH ROW
        WHEN ((OLD.space, OLD.project, OLD.state) IS DISTINCT FROM (NEW.space, NEW.project, NEW.state))
        EXECUTE FUNCTION task_counts_follow();
    """,
    ),
    # Plan-signing keys shared by every node (issues 15/16): each key's private half, sealed with
    # the server's encryption key (server_shim.store.signing_keys). NULL: a key made before, held
    # as a file in a node's home until that node's next start stores it.
    """
    ALTER TABLE signing_keys ADD COLUMN private_key TEXT;
    """,
]


MAX_BATCH = 64


@dataclass(frozen=True)
class _Call:
    """One `Database.run` waiting for the database thread."""

    fn: Callable[..., Any]
    args: tuple[object, ...]
    future: asyncio.Future[Any]


class Database:
    """One connection, used from one thread at a time: a SQLite file or a PostgreSQL database.

    `run` calls queue up for the database thread, which takes all that are waiting (up to
    `MAX_BATCH`) and runs them in one transaction, each inside a savepoint of its own: a call
    that raises is rolled back to its savepoint alone, and every caller hears its result only
    after the one COMMIT. Under load, that is one commit and one wake-up of the event loop
    for many calls instead of one each (group commit); alone, a call runs as it always did.
    A PostgreSQL connection that was lost (the server restarted) is opened again before the
    next transaction; the calls of the transaction it broke hear the error.
    """

    def __init__(self, location: Path | str, sealer: Sealer | None = None) -> None:
        """``sealer`` seals and opens the store's sensitive values (`server_shim.store.sealing`)."""
        self.location = location
        self.sealer = sealer
        self.dialect = POSTGRESQL if is_postgresql(location) else SQLITE
        self.path = Path(location) if self.dialect == SQLITE else None
        self.conn: Any = self._open()
        self._begin = "BEGIN IMMEDIATE" if self.dialect == SQLITE else "BEGIN"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db")
        self._lock = threading.Lock()
        self._pending: collections.deque[_Call] = collections.deque()
        self._pending_lock = threading.Lock()
        self._draining = False

    def _open(self) -> Any:
        if self.dialect == SQLITE:
            conn: Any = dialects.connect(Path(self.location), MIGRATIONS)
        else:
            conn = dialects.connect_postgresql(str(self.location), MIGRATIONS)
        conn.sealer = self.sealer  # what `sealing.of(conn)` finds
        return conn

    def _ready(self) -> None:
        """Reopen a lost PostgreSQL connection (raises `ConfigError` while it cannot be)."""
        if self.dialect == POSTGRESQL and self.conn.broken:
            self.conn = self._open()

    def describe(self) -> str:
        """Where the data is, for messages (no password)."""
        return str(self.path) if self.path is not None else redacted(str(self.location))

    def sync(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(connection, *args)` in one transaction, here and now.

        A transaction that fails, at any statement or at its COMMIT, is rolled back and its
        error raised as it was: SQLite may have rolled it back itself (a full disk does), and
        a COMMIT that failed otherwise leaves it open, which would fail every later call.
        """
        with self._lock:
            self._ready()
            self.conn.execute(self._begin)
            try:
                result = fn(self.conn, *args)
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return result

    def _rollback(self) -> None:
        if getattr(self.conn, "broken", False):
            return
        if self.conn.in_transaction:
            with contextlib.suppress(Exception):  # the error being raised is the one to tell
                self.conn.execute("ROLLBACK")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(connection, *args)` on the database thread, atomically, awaited from the event loop."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._pending_lock:
            self._pending.append(_Call(fn, args, future))
            start, self._draining = not self._draining, True
        if start:
            self._executor.submit(self._drain)
        return await future

    def _drain(self) -> None:
        """Run batches until no call waits (on the database thread)."""
        while True:
            with self._pending_lock:
                if not self._pending:
                    self._draining = False
                    return
                batch = [self._pending.popleft() for _ in range(min(MAX_BATCH, len(self._pending)))]
            outcomes = self._batch(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Call, bool, Any]]] = {}
            for call, (ok, value) in zip(batch, outcomes, strict=True):
                by_loop.setdefault(call.future.get_loop(), []).append((call, ok, value))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_settle, settled)

    def _batch(self, batch: list[_Call]) -> list[tuple[bool, Any]]:
        """Each call in a savepoint of one transaction: (True, result) or (False, exception).

        When the transaction fails as a whole (its COMMIT, say, on a full disk), nothing of it
        happened, and each call is run again alone: a write the disk refuses fails by itself,
        and the reads batched beside it still answer.
        """
        with self._lock:
            try:
                return self._transaction(batch)
            except Exception as exc:
                if len(batch) == 1:
                    return [(False, exc)]
            outcomes: list[tuple[bool, Any]] = []
            for call in batch:
                try:
                    outcomes.extend(self._transaction([call]))
                except Exception as exc:
                    outcomes.append((False, exc))
            return outcomes

    def _transaction(self, batch: list[_Call]) -> list[tuple[bool, Any]]:
        """The calls in one transaction; raises, rolled back, when BEGIN or COMMIT fails."""
        try:
            self._ready()
            self.conn.execute(self._begin)
            outcomes = [self._one(call) for call in batch]
            self.conn.execute("COMMIT")
        except Exception:
            self._rollback()
            raise
        return outcomes

    def _one(self, call: _Call) -> tuple[bool, Any]:
        self.conn.execute("SAVEPOINT call")
        try:
            result = call.fn(self.conn, *call.args)
        except Exception as exc:
            self.conn.execute("ROLLBACK TO call")  # raises (and fails the batch) if SQLite undid more
            self.conn.execute("RELEASE call")
            return False, exc
        self.conn.execute("RELEASE call")
        return True, result

    def rewrite(self) -> None:
        """Rebuild the file and empty the write-ahead log, so that no freed page keeps old rows.

        SQLite only: PostgreSQL's own VACUUM is the operator's to schedule.
        """
        if self.dialect != SQLITE:
            return
        with self._lock:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.execute("VACUUM")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Finish pending work and close."""
        self._executor.shutdown(wait=True)
        self.conn.close()


def _settle(settled: list[tuple[_Call, bool, Any]]) -> None:
    """Hand each call's outcome to its waiter (on its event loop)."""
    for call, ok, value in settled:
        if call.future.done():  # its waiter was cancelled
            continue
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)
