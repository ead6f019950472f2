"""PostgreSQL behind the same connection the store modules use with SQLite.

Every store function is written as ``fn(conn, ...)`` with ``conn.execute(sql, params)``,
``?`` placeholders and rows read by index or by name (`sqlite3.Row`). `PgConnection` wraps
a psycopg 3 connection so that those functions run unchanged: ``?`` becomes ``$1, $2, ...``
(PostgreSQL's own placeholders, sent with psycopg's `RawCursor`: no ``%`` escaping, and the
server prepares a statement after a few uses), and rows are `Row`s, tuples that also answer
by column name. The connection is in autocommit mode: `server_shim.store.database` sends
BEGIN, SAVEPOINT and COMMIT itself, the same statements for both databases.

Why psycopg 3 and its blocking API: the store's model is a function run in one
transaction on the database thread, with waiting calls batched into one commit; psycopg's
blocking connection fits it as sqlite3 does, and measured on this workload it is no
slower than asyncpg (README, "Choosing the PostgreSQL driver").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import RawCursor, pq
from psycopg.rows import RowMaker

from tentacle.errors import InvalidInput

DIALECT = "postgresql"
# Errors that may pass by themselves: another transaction won a race, or the connection
# went (a restart of PostgreSQL, a failover); the database layer reconnects for the next call.
TRANSIENT = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.OperationalError,
)


class Row(tuple[Any, ...]):
    """One result row: a tuple that also answers ``row["column"]`` and ``keys()``, as sqlite3.Row."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._names[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = {column.name: index for index, column in enumerate(cursor.description or ())}
    return functools.partial(Row, names=names)


@functools.lru_cache(maxsize=4096)
def placeholders(sql: str) -> str:
    """``sql`` with each ``?`` outside quotes and comments replaced by ``$1``, ``$2``, ..."""
    out: list[str] = []
    number, i, size = 0, 0, len(sql)
    while i < size:
        char = sql[i]
        if char in "'\"":
            end = sql.find(char, i + 1)
            end = size - 1 if end < 0 else end
            out.append(sql[i : end + 1])
            i = end + 1
            continue
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = size if end < 0 else end
            out.append(sql[i:end])
            i = end
            continue
        if char == "?":
            number += 1
            out.append(f"${number}")
        else:
            out.append(char)
        i += 1
    return "".join(out)


class NulInText(InvalidInput):
    """A text value holds a NUL character, which PostgreSQL's text type cannot hold."""


def _no_nul(params: Sequence[Any]) -> None:
    """Refuse a NUL in a text parameter by name of the rule (PostgreSQL would fail the statement
    with a driver error; SQLite keeps it, but no value of ours has one)."""
    for value in params:
        if isinstance(value, str) and "\x00" in value:
            raise NulInText("text must not contain NUL (\\0) characters")


class Cursor:
    """The answer of one statement: iterate it, or fetch one or all rows."""

    def __init__(self, raw: psycopg.Cursor[Row]) -> None:
        self._raw = raw

    def fetchone(self) -> Row | None:
        """The next row, or None."""
        return self._raw.fetchone() if self._raw.description else None

    def fetchall(self) -> list[Row]:
        """Every row left."""
        return self._raw.fetchall() if self._raw.description else []

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        return self._raw.rowcount


class PgConnection:
    """A psycopg connection that takes the store's SQL as sqlite3 does."""

    dialect = DIALECT
    sealer: object | None = None  # the home's sealer (`server_shim.store.sealing.of`)

    def __init__(self, url: str) -> None:
        self.url = url
        self.raw: psycopg.Connection[Row] = psycopg.Connection.connect(
            url, autocommit=True, row_factory=_row_factory, cursor_factory=RawCursor, connect_timeout=10
        )

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders."""
        _no_nul(params)
        cursor = self.raw.cursor()
        cursor.execute(placeholders(sql), tuple(params) or None)
        return Cursor(cursor)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row (pipelined: one round trip for many)."""
        batch = [tuple(row) for row in rows]
        for row in batch:
            _no_nul(row)
        if batch:
            self.raw.cursor().executemany(placeholders(sql), batch)

    def script(self, text: str) -> None:
        """Run several statements without parameters (a migration)."""
        with psycopg.ClientCursor(self.raw) as cursor:
            cursor.execute(text.encode())

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (or failed and not yet rolled back)."""
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        """Whether the connection is lost and must be opened again."""
        return self.raw.closed or self.raw.broken

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()
