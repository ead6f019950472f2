"""Task log lines in the database: stored in batches, with a size limit per target.

Every target of a task may keep `limit` bytes of log (text plus one byte per line, as
a file of lines would take). Past it, lines are counted and dropped, and one line of
the ``system`` stream says how many: the *marker*. The marker is rewritten with each
batch that drops more, and moves to the end of the log each time, so that a reader
following the log sees the count grow and the stored log holds exactly one.

The marker's ``machine_seq`` is the negated seq of the last line dropped: it is told
apart from the tentacle's lines (whose seqs are 0 or more), and it remembers where the
target's log was read up to, so that a restarted server resumes after the dropped
lines (`last_machine_seq`) rather than asking for them again. Its counts are read back
from its text (`totals`).

`store` takes the totals as they stood and returns the new ones; it changes nothing of
its caller's, so that a write that fails (a full disk) leaves the counts as they were.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

Key = tuple[str, str]  # (task id, machine name)
LogRow = tuple[int, float, str, str | None, str]  # (machine seq, time, stream, step, text)
LINE_OVERHEAD = 1  # a line counts its newline: empty lines fill the limit too
_MARK = re.compile(r"^log limit of \d+ bytes reached for this target: (\d+) lines \((\d+) bytes\) dropped")


@dataclass(frozen=True)
class LogTotals:
    """What one target's log holds: bytes kept, lines and bytes dropped, the last seq seen."""

    stored_bytes: int = 0
    dropped_lines: int = 0
    dropped_bytes: int = 0
    last_seq: int = 0


@dataclass(frozen=True)
class Batch:
    """Lines of one target, in the order its tentacle numbered them."""

    task_id: str
    machine: str
    lines: list[LogRow]

    @property
    def key(self) -> Key:
        """Whose lines these are."""
        return self.task_id, self.machine


def marker_text(limit: int, totals: LogTotals) -> str:
    """The one line that says how much was dropped."""
    return (
        f"log limit of {limit} bytes reached for this target: {totals.dropped_lines} lines"
        f" ({totals.dropped_bytes} bytes) dropped"
    )


def totals(conn: sqlite3.Connection, task_id: str, machine: str) -> LogTotals:
    """A target's totals as stored (read once, when its log is first written after a start)."""
    stored, last = conn.execute(
        "SELECT COALESCE(SUM(LENGTH(text) + ?), 0), COALESCE(MAX(machine_seq), 0) FROM task_log"
        " WHERE task_id = ? AND machine = ? AND machine_seq >= 0",
        (LINE_OVERHEAD, task_id, machine),
    ).fetchone()
    found = LogTotals(stored_bytes=int(stored), last_seq=int(last))
    marker = conn.execute(
        "SELECT machine_seq, text FROM task_log WHERE task_id = ? AND machine = ? AND machine_seq < 0",
        (task_id, machine),
    ).fetchone()
    if marker is None:
        return found
    counts = _MARK.match(marker["text"])
    lines, size = (int(counts[1]), int(counts[2])) if counts else (1, 0)
    return replace(found, dropped_lines=lines, dropped_bytes=size, last_seq=max(last, -marker["machine_seq"]))


def last_machine_seq(conn: sqlite3.Connection, task_id: str, machine: str) -> int:
    """The highest line number read from this target, stored or dropped (where to resume)."""
    row = conn.execute(
        "SELECT MAX(ABS(machine_seq)) FROM task_log WHERE task_id = ? AND machine = ?", (task_id, machine)
    ).fetchone()
    return int(row[0] or 0)


def store(
    conn: sqlite3.Connection, batches: Iterable[Batch], known: Mapping[Key, LogTotals], limit: int
) -> dict[Key, LogTotals]:
    """Store the batches in one transaction, keeping each target under ``limit``; the new totals.

    ``known`` holds the totals of targets already seen; the others are read here. A line
    whose seq is not past the last one seen from its target (a repeat) is skipped.
    """
    after: dict[Key, LogTotals] = {}
    rows: list[tuple[str, str, int, float, str, str | None, str]] = []
    dropping: set[Key] = set()
    for batch in batches:
        key = batch.key
        current = after.get(key) or known.get(key) or totals(conn, *key)
        stored, dropped_lines, dropped_bytes, last = (
            current.stored_bytes, current.dropped_lines, current.dropped_bytes, current.last_seq,
        )  # fmt: skip
        for seq, when, stream, step, text in batch.lines:
            if seq <= last:
                continue
            last, size = seq, len(text) + LINE_OVERHEAD
            if dropped_lines or stored + size > limit:
                dropped_lines, dropped_bytes = dropped_lines + 1, dropped_bytes + size
                dropping.add(key)
            else:
                stored += size
                rows.append((batch.task_id, batch.machine, seq, when, stream, step, text))
        after[key] = LogTotals(stored, dropped_lines, dropped_bytes, last)
    conn.executemany(
        "INSERT INTO task_log (task_id, machine, machine_seq, time, stream, step, text)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, machine, machine_seq) DO NOTHING",
        rows,
    )
    for key in dropping:
        _write_marker(conn, key, after[key], limit)
    return after


def _write_marker(conn: sqlite3.Connection, key: Key, now: LogTotals, limit: int) -> None:
    """Replace the target's marker with one at the end of the log, with the counts of now."""
    task_id, machine = key
    conn.execute("DELETE FROM task_log WHERE task_id = ? AND machine = ? AND machine_seq < 0", key)
    conn.execute(
        "INSERT INTO task_log (task_id, machine, machine_seq, time, stream, step, text)"
        " VALUES (?, ?, ?, ?, 'system', NULL, ?)",
        (task_id, machine, -now.last_seq, time.time(), marker_text(limit, now)),
    )
