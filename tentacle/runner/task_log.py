"""A task's log on disk: ``tasks/<taskId>/log.jsonl``, one JSON object per line.

How it works::

    append_many   numbers a batch of lines, writes them in one write and flushes; the
                  runner calls it from its state writer thread only, and shows the lines
                  to nobody before it returned (tentacle.runner.log_feed)
    recover       after a crash, counts the lines written after task.json's last save
                  (from its remembered byte offset) and cuts a half-written last line,
                  so numbering continues without a gap or a repeat
    read_after    reads lines from the file (in a worker thread), starting at the nearest
                  line of a sparse index (every `INDEX_EVERY`-th line's byte offset) so
                  that catching up is not quadratic

This module does blocking file I/O and nothing else; the event loop never calls it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from tentacle.common.logs import event

log = logging.getLogger("tentacle.runner.runner")

INDEX_EVERY: Final = 1000

# What a line is before the log numbers it: (time, stream, step, text).
Entry = tuple[float, str, str, str]


@dataclass(frozen=True)
class LogLine:
    """One numbered log line of a task."""

    seq: int
    time: float
    stream: str
    step: str
    text: str

    def to_json(self) -> dict[str, Any]:
        """The wire and disk form."""
        return {
            "seq": self.seq,
            "time": self.time,
            "stream": self.stream,
            "step": self.step,
            "text": self.text,
        }


class TaskLog:
    """The append-only, numbered log file of one task (blocking: call it off the event loop)."""

    def __init__(self, path: Path, next_seq: int = 1, size: int = 0) -> None:
        """A log whose next line is ``next_seq`` and whose file holds ``size`` bytes."""
        self.path = path
        self.next_seq = next_seq
        self.size = size
        self._file: BinaryIO | None = None
        self._index: dict[int, int] = {}  # seq of every INDEX_EVERY-th line -> its byte offset

    @classmethod
    def recover(cls, path: Path, next_seq: int, size: int) -> TaskLog:
        """Open an existing log, counting lines written after task.json was last saved."""
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return cls(path, next_seq, 0)
        if actual == size:
            return cls(path, next_seq, size)
        start = size if actual > size else 0  # shorter than recorded: someone edited it
        last_seq, good_end = _scan_tail(path, start)
        if good_end < actual:
            os.truncate(path, good_end)  # a half-written last line from the crash
        return cls(path, max(next_seq, last_seq + 1), good_end)

    def append(self, time: float, stream: str, step: str, text: str) -> LogLine | None:
        """Number, write and flush one line; None when the disk refused it (logged)."""
        lines = self.append_many([(time, stream, step, text)])
        return lines[0] if lines else None

    def append_many(self, entries: Sequence[Entry]) -> list[LogLine]:
        """Number, write and flush lines in one write; none when the disk refused them (logged)."""
        lines = [LogLine(self.next_seq + n, *entry) for n, entry in enumerate(entries)]
        encoded = [json.dumps(line.to_json()).encode() + b"\n" for line in lines]  # ASCII-only
        try:
            file = self._open()
            file.write(b"".join(encoded))
            file.flush()
        except OSError as exc:
            self._undo_partial_write()
            event(log, "task.log_write_failed", logging.ERROR, path=self.path, reason=str(exc))
            return []
        for line, data in zip(lines, encoded, strict=True):
            if line.seq % INDEX_EVERY == 1:
                self._index[line.seq] = self.size
            self.size += len(data)
        self.next_seq += len(lines)
        return lines

    def _open(self) -> BinaryIO:
        """The append handle, opened on first use."""
        if self._file is None:
            self._file = self.path.open("ab")
        return self._file

    def _undo_partial_write(self) -> None:
        """Cut what a failed write left, so that the next line starts on a line of its own."""
        self.close()
        try:
            os.truncate(self.path, self.size)
        except OSError as exc:
            event(log, "task.log_truncate_failed", logging.ERROR, path=self.path, reason=str(exc))

    def close(self) -> None:
        """Release the append handle (reopened if another line comes)."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                event(log, "task.log_close_failed", logging.WARNING, path=self.path, reason=str(exc))

    def read_after(
        self, since: int, limit: int, max_bytes: int, upto: int | None = None
    ) -> tuple[list[LogLine], bool]:
        """Lines with since < seq < upto (default: every line written) from the file."""
        upto = self.next_seq if upto is None else upto  # lines appended meanwhile wait
        index = self._index.copy()  # the writer may add to it meanwhile; a copy is atomic
        starts = [seq for seq in index if seq <= since + 1]
        offset = index[max(starts)] if starts else 0
        try:
            with self.path.open("rb") as file:
                file.seek(offset)
                lines = self._indexed(_parse_lines(file, offset))
                return collect_lines(lines, since, upto, limit, max_bytes)
        except FileNotFoundError:
            return [], False

    def _indexed(self, lines: Iterator[tuple[int, LogLine]]) -> Iterator[LogLine]:
        """Pass lines through, noting the offsets the index wants."""
        for offset, line in lines:
            if line.seq % INDEX_EVERY == 1:
                self._index.setdefault(line.seq, offset)
            yield line


def collect_lines(
    lines: Iterable[LogLine], since: int, upto: int, limit: int, max_bytes: int
) -> tuple[list[LogLine], bool]:
    """Up to ``limit`` lines (and about ``max_bytes`` of text) with since < seq < upto."""
    taken: list[LogLine] = []
    used = 0
    for line in lines:
        if line.seq <= since:
            continue
        if line.seq >= upto:
            break
        if len(taken) >= limit or (taken and used + len(line.text) > max_bytes):
            return taken, True
        taken.append(line)
        used += len(line.text)
    return taken, False


def _parse_lines(file: BinaryIO, offset: int) -> Iterator[tuple[int, LogLine]]:
    """Each complete, readable line from ``offset`` on, with its byte offset."""
    for raw in file:
        here, offset = offset, offset + len(raw)
        if not raw.endswith(b"\n"):
            return  # being written right now, or cut by a crash
        line = _parse(raw)
        if line is not None:
            yield here, line


def _parse(raw: bytes) -> LogLine | None:
    """One log.jsonl line, or None when it is not one (a hand edit)."""
    try:
        body = json.loads(raw)
        line = LogLine(body["seq"], body["time"], body["stream"], body["step"], body["text"])
    except (ValueError, KeyError, TypeError):
        return None
    return line if isinstance(line.seq, int) and isinstance(line.text, str) else None


def _scan_tail(path: Path, start: int) -> tuple[int, int]:
    """The highest seq from byte ``start`` on, and where the last complete line ends."""
    last_seq, good_end = 0, start
    with path.open("rb") as file:
        file.seek(start)
        for raw in file:
            if not raw.endswith(b"\n"):
                break
            good_end += len(raw)
            line = _parse(raw)
            if line is not None:
                last_seq = max(last_seq, line.seq)
    return last_seq, good_end
