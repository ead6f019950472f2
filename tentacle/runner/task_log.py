"""A task's log on disk: ``tasks/<taskId>/log.jsonl``, one JSON object per line.

How it works::

    append_many   numbers a batch of lines, writes them in one write and flushes; the
                  runner calls it from its state writer thread only, and shows the lines
                  to nobody before it returned (tentacle.runner.log_feed). On the way:
                  - output lines (stdout, stderr) past the cap (``max_bytes`` of file) are
                    counted as dropped, not written; the first of them becomes one system
                    line saying so. System lines always go in.
                  - output lines that would leave the disk with less than `DISK_FLOOR`
                    free are counted as lost, so that the task's own flood never takes
                    the last bytes its state (task.json) and its notes need; a batch the
                    disk refuses (ENOSPC, EIO) is lost whole, counted, and cut off again
                  - the first batch written after a loss starts with a system line saying
                    how many lines were lost and why
    recover       after a crash, counts the lines written after task.json's last save
                  (from its remembered byte offset) and cuts a half-written last line,
                  so numbering continues without a gap or a repeat
    read_after    reads lines from the file (in a worker thread), starting at the nearest
                  line of a sparse index (every `INDEX_EVERY`-th line's byte offset) so
                  that catching up is not quadratic

Lines are `tentacle.protocol.rpc_messages.LogLine` structs, on disk as on the wire.
This module does blocking file I/O and nothing else; the event loop never calls it.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Final

import msgspec

from tentacle.common.logs import event
from tentacle.protocol.rpc_messages import LogLine, LogStream

log = logging.getLogger("tentacle.runner.runner")

INDEX_EVERY: Final = 1000
MAX_BYTES: Final = 64 * 1024 * 1024  # the default cap of one task's log.jsonl
DISK_FLOOR: Final = 1024 * 1024  # free bytes output lines never take
_LINE_COST: Final = 90  # about what a line takes besides its text, in JSON
_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(LogLine)

# What a line is before the log numbers it: (time, stream, step, text).
Entry = tuple[float, LogStream, str, str]


class TaskLog:
    """The append-only, numbered log file of one task (blocking: call it off the event loop).

    ``dropped`` counts output lines over the cap, ``lost`` lines the disk could not take
    (``lost_reason`` says why); the loop reads them between batches.
    """

    def __init__(self, path: Path, next_seq: int = 1, size: int = 0, *, max_bytes: int = MAX_BYTES) -> None:
        """A log whose next line is ``next_seq`` and whose file holds ``size`` bytes."""
        self.path = path
        self.next_seq = next_seq
        self.size = size
        self.max_bytes = max_bytes
        self.dropped = 0
        self.lost = 0
        self.lost_reason = ""
        self._unreported = 0  # lost lines no line of the log has told of yet
        self._cap_told = self.capped  # a log recovered at its cap has said so already
        self._file: BinaryIO | None = None
        self._index: dict[int, int] = {}  # seq of every INDEX_EVERY-th line -> its byte offset

    @property
    def capped(self) -> bool:
        """Whether output lines are dropped from now on (the file reached its cap)."""
        return self.size >= self.max_bytes

    @classmethod
    def recover(cls, path: Path, next_seq: int, size: int, *, max_bytes: int = MAX_BYTES) -> TaskLog:
        """Open an existing log, counting lines written after task.json was last saved."""
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return cls(path, next_seq, 0, max_bytes=max_bytes)
        if actual == size:
            return cls(path, next_seq, size, max_bytes=max_bytes)
        start = size if actual > size else 0  # shorter than recorded: someone edited it
        last_seq, good_end = _scan_tail(path, start)
        if good_end < actual:
            os.truncate(path, good_end)  # a half-written last line from the crash
        return cls(path, max(next_seq, last_seq + 1), good_end, max_bytes=max_bytes)

    def append(self, time: float, stream: LogStream, step: str, text: str) -> LogLine | None:
        """Number, write and flush one line; None when it was dropped or lost."""
        lines = self.append_many([(time, stream, step, text)])
        return lines[-1] if lines else None

    def append_many(self, entries: Sequence[Entry]) -> list[LogLine]:
        """Number, write and flush what may be written of ``entries`` in one write (see the module doc)."""
        kept = self._keep(entries)
        if not kept:
            return []
        lines = [
            LogLine(seq=self.next_seq + n, time=time, stream=stream, step=step, text=text)
            for n, (time, stream, step, text) in enumerate(kept)
        ]
        pieces = _encode_lines(lines)
        try:
            file = self._open()
            file.write(b"".join(data for _, data in pieces))
            file.flush()
        except OSError as exc:
            self._undo_partial_write()
            self._lose(len(kept), exc.strerror or str(exc))
            event(log, "task.log_write_failed", logging.ERROR, path=self.path, reason=str(exc))
            return []
        self._unreported = 0
        for seq, data in pieces:
            if seq % INDEX_EVERY == 1:
                self._index[seq] = self.size
            self.size += len(data)
        self.next_seq += len(lines)
        return lines

    def _keep(self, entries: Sequence[Entry]) -> list[Entry]:
        """The entries to write: output under the disk floor or over the cap goes (counted); notes come in."""
        kept = list(entries)
        output = sum(1 for entry in entries if entry[1] is not LogStream.SYSTEM)
        room = None if not output else self._disk_room()
        if room is not None and room < DISK_FLOOR:
            self._lose(output, f"less than {DISK_FLOOR // 1024} KiB free on the tentacle's disk")
            kept = [entry for entry in entries if entry[1] is LogStream.SYSTEM]
        elif self.size + sum(len(entry[3]) + _LINE_COST for entry in entries) >= self.max_bytes:
            kept = self._under_cap(entries)
        if self._unreported and kept:
            lines = "1 log line was" if self._unreported == 1 else f"{self._unreported} log lines were"
            kept.insert(0, (kept[0][0], LogStream.SYSTEM, kept[0][2], f"{lines} lost: {self.lost_reason}"))
        return kept

    def _under_cap(self, entries: Sequence[Entry]) -> list[Entry]:
        """The entries the cap lets through (output until it is reached, system lines always), with the
        line that says it was reached, once (at the start when the file reached it before)."""
        kept: list[Entry] = []
        size = self.size
        for entry in entries:
            if size >= self.max_bytes and not self._cap_told:
                self._cap_told = True
                kept.append((entry[0], LogStream.SYSTEM, entry[2], _capped(self)))
            if entry[1] is not LogStream.SYSTEM and size >= self.max_bytes:
                self.dropped += 1
                continue
            kept.append(entry)
            size += len(entry[3]) + _LINE_COST  # about its size: the cap is a bound, not a quota
        return kept

    def _disk_room(self) -> int | None:
        """Free bytes on the log's filesystem (None when it cannot be asked)."""
        try:
            stat = os.statvfs(self.path.parent)
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize

    def _lose(self, count: int, reason: str) -> None:
        """Count lines the disk did not take."""
        self.lost += count
        self._unreported += count
        self.lost_reason = reason

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

    def _indexed(self, lines: Iterator[tuple[int, LogLine, int]]) -> Iterator[tuple[LogLine, int]]:
        """Pass lines (with their sizes) through, noting the offsets the index wants."""
        for offset, line, size in lines:
            if line.seq % INDEX_EVERY == 1:
                self._index.setdefault(line.seq, offset)
            yield line, size


def _capped(log_file: TaskLog) -> str:
    """The system line that replaces the first output line over the cap."""
    return (
        f"the task's log reached its cap of {log_file.max_bytes / 2**20:g} MiB:"
        " further output lines are counted, not kept"
    )


def _encode_lines(lines: Sequence[LogLine]) -> list[tuple[int, bytes]]:
    """The lines' JSON lines, in pieces that each start at an indexed line (seq % INDEX_EVERY == 1)
    or at the first line: (the piece's first seq, its bytes)."""
    first = lines[0].seq
    cuts = [0, *range(-(first - 1) % INDEX_EVERY or INDEX_EVERY, len(lines), INDEX_EVERY), len(lines)]
    pieces = []
    for start, end in itertools.pairwise(sorted(set(cuts))):
        try:
            data = _ENCODER.encode_lines(lines[start:end])
        except UnicodeEncodeError:
            data = b"".join(_encode(line) + b"\n" for line in lines[start:end])
        pieces.append((first + start, data))
    return pieces


def line_size(line: LogLine) -> int:
    """The bytes a line takes in JSON, with its newline (on disk as on the wire)."""
    return len(_encode(line)) + 1


def _encode(line: LogLine) -> bytes:
    """A line's JSON; text no encoder can write (a lone surrogate from a file name) is replaced."""
    try:
        return _ENCODER.encode(line)
    except UnicodeEncodeError:
        step, text = (value.encode("utf-8", "replace").decode() for value in (line.step, line.text))
        return _ENCODER.encode(msgspec.structs.replace(line, step=step, text=text))


def collect_lines(
    lines: Iterable[tuple[LogLine, int]], since: int, upto: int, limit: int, max_bytes: int
) -> tuple[list[LogLine], bool]:
    """Up to ``limit`` lines (and ``max_bytes`` of their JSON, at least one line) with since < seq < upto."""
    taken: list[LogLine] = []
    used = 0
    for line, size in lines:
        if line.seq <= since:
            continue
        if line.seq >= upto:
            break
        if len(taken) >= limit or (taken and used + size > max_bytes):
            return taken, True
        taken.append(line)
        used += size
    return taken, False


def _parse_lines(file: BinaryIO, offset: int) -> Iterator[tuple[int, LogLine, int]]:
    """Each complete, readable line from ``offset`` on, with its byte offset and size."""
    for raw in file:
        here, offset = offset, offset + len(raw)
        if not raw.endswith(b"\n"):
            return  # being written right now, or cut by a crash
        line = _parse(raw)
        if line is not None:
            yield here, line, len(raw)


def _parse(raw: bytes) -> LogLine | None:
    """One log.jsonl line, or None when it is not one (a hand edit)."""
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError:
        return None


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
