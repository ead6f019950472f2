"""A task's state on disk: ``tasks/<taskId>/task.json`` and ``tasks/<taskId>/log.jsonl``.

How it works::

    task.json   the whole record (plan, state, gates, version, log position, the step
                running), rewritten atomically (write_private: temp file, fsync, rename)
                on every change, so a crash leaves the old record or the new one
    log.jsonl   one JSON object per log line, appended and flushed before the line is
                visible to anyone; task.json remembers the log's byte size at its save

A crash mid-step leaves lines in log.jsonl that task.json never heard of (the script
kept printing). `TaskLog.recover` counts them from the remembered byte offset and cuts a
half-written last line, so numbering continues without a gap or a repeat.

Readers are served from the last `RECENT_LINES` lines kept in memory; an older part is
read from the file (in a worker thread), starting at the nearest line of a sparse
index (every `INDEX_EVERY`-th line's byte offset) so that catching up is not quadratic.

This module does blocking file I/O; the runner calls the slow parts in a thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, TypeVar, cast

from tentacle.common.atomicfile import write_private
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.plan import Plan

log = logging.getLogger("tentacle.runner.runner")

TaskState = Literal["queued", "running", "done", "cancelled"]
GateState = Literal["pending", "running", "success", "failed", "unknown", "cancelled"]
Stop = Literal["cancel", "finish"]

TASK_STATES: Final = ("queued", "running", "done", "cancelled")
GATE_STATES: Final = ("pending", "running", "success", "failed", "unknown", "cancelled")
ENDED: Final = ("done", "cancelled")
STOPS: Final = ("cancel", "finish")
FORMAT: Final = 1
RECENT_LINES: Final = 2000
INDEX_EVERY: Final = 1000
TASK_FILE: Final = "task.json"
LOG_FILE: Final = "log.jsonl"

_T = TypeVar("_T")


class StateError(TentacleError, ValueError):
    """A task.json that cannot be read back (hand-edited, or from another version)."""


class StateWriteError(TentacleError):
    """Task state could not be written; nothing that depends on it may go ahead."""


@dataclass
class GateRecord:
    """One gate the server opened: ``pending`` until it runs (not shown to the server)."""

    index: int
    name: str
    state: GateState = "pending"
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """The wire and disk form."""
        return {"index": self.index, "name": self.name, "state": self.state, "reason": self.reason}

    @classmethod
    def from_json(cls, obj: object) -> GateRecord:
        """Read back `to_json`'s form; raises `StateError`."""
        gate = _mapping(obj, "gates[]")
        state = _choice(gate, "state", GATE_STATES)
        return cls(
            _get(gate, "index", int),
            _get(gate, "name", str),
            cast(GateState, state),
            _get(gate, "reason", str),
        )


@dataclass(eq=False)
class TaskRecord:
    """Everything the runner knows about one task, as task.json holds it."""

    plan: Plan
    arrival: int
    state: TaskState = "queued"
    gates: dict[int, GateRecord] = field(default_factory=dict)
    version: int = 1
    log_seq: int = 1
    log_bytes: int = 0
    current_step: int | None = None
    packages: dict[str, str] = field(default_factory=dict)
    stop: Stop | None = None
    finished: bool = False

    @property
    def task_id(self) -> str:
        """The task's id, from its plan."""
        return self.plan.task_id

    @property
    def ended(self) -> bool:
        """Whether the task released the slot for good (done or cancelled)."""
        return self.state in ENDED

    def to_json(self) -> dict[str, Any]:
        """The task.json form."""
        return {
            "format": FORMAT,
            "plan": self.plan.to_json(),
            "arrival": self.arrival,
            "state": self.state,
            "gates": [gate.to_json() for gate in self.gates.values()],
            "version": self.version,
            "logSeq": self.log_seq,
            "logBytes": self.log_bytes,
            "currentStep": self.current_step,
            "packages": dict(self.packages),
            "stop": self.stop,
            "finished": self.finished,
        }

    @classmethod
    def from_json(cls, obj: object) -> TaskRecord:
        """Read back `to_json`'s form; raises `StateError` (or `PlanError`, a ValueError)."""
        body = _mapping(obj, "document")
        if body.get("format") != FORMAT:
            raise StateError(f"format: must be {FORMAT}")
        gates = [GateRecord.from_json(gate) for gate in _get(body, "gates", list)]
        packages = _get(body, "packages", dict)
        if not all(isinstance(value, str) for value in packages.values()):
            raise StateError("packages: every value must be a path")
        stop = body.get("stop")
        if stop is not None and stop not in STOPS:
            raise StateError("stop: must be null, 'cancel' or 'finish'")
        current = body.get("currentStep")
        if current is not None and (not isinstance(current, int) or isinstance(current, bool)):
            raise StateError("currentStep: must be null or an integer")
        return cls(
            plan=Plan.from_json(body.get("plan")),
            arrival=_get(body, "arrival", int),
            state=cast(TaskState, _choice(body, "state", TASK_STATES)),
            gates={gate.index: gate for gate in gates},
            version=_get(body, "version", int),
            log_seq=max(_get(body, "logSeq", int), 1),
            log_bytes=max(_get(body, "logBytes", int), 0),
            current_step=current,
            packages=cast(dict[str, str], packages),
            stop=stop,
            finished=_get(body, "finished", bool),
        )


def _mapping(value: object, path: str) -> Mapping[str, object]:
    """``value`` as a JSON object, or `StateError`."""
    if not isinstance(value, dict):
        raise StateError(f"{path}: must be an object")
    return cast(Mapping[str, object], value)


def _get(obj: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    """A field of exactly this JSON type (a bool is not an integer)."""
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StateError(f"{key}: must be of type {kind.__name__}")
    return value


def _choice(obj: Mapping[str, object], key: str, choices: tuple[str, ...]) -> str:
    """A string field that must be one of ``choices``."""
    value = _get(obj, key, str)
    if value not in choices:
        raise StateError(f"{key}: must be one of {', '.join(choices)}")
    return value


# --- the store ----------------------------------------------------------------------------


class TaskStore:
    """The folders of every task: ``<state>/tasks/<taskId>/`` and ``<state>/work/<taskId>/``."""

    def __init__(self, state_dir: Path) -> None:
        """A store under ``state_dir`` (created on first write)."""
        self.root = state_dir / "tasks"
        self.work_root = state_dir / "work"

    def task_dir(self, task_id: str) -> Path:
        """Where a task's task.json and log.jsonl live."""
        return self.root / task_id

    def work_dir(self, task_id: str) -> Path:
        """The folder a task's scripts run in."""
        return self.work_root / task_id

    def log_path(self, task_id: str) -> Path:
        """A task's log.jsonl."""
        return self.task_dir(task_id) / LOG_FILE

    def load_all(self) -> list[TaskRecord]:
        """Every readable task, in arrival order; an unreadable one is logged and skipped."""
        if not self.root.is_dir():
            return []
        records = []
        for folder in sorted(self.root.iterdir()):
            try:
                records.append(self._load(folder))
            except (OSError, ValueError) as exc:
                reason = exc.message if isinstance(exc, TentacleError) else str(exc)
                event(log, "task.state_unreadable", logging.ERROR, folder=folder, reason=reason)
        return sorted(records, key=lambda record: record.arrival)

    def _load(self, folder: Path) -> TaskRecord:
        """One task's record; raises OSError or ValueError."""
        record = TaskRecord.from_json(json.loads((folder / TASK_FILE).read_bytes()))
        if record.task_id != folder.name:
            raise StateError(f"task.json belongs to task {record.task_id!r}")
        return record

    def create(self, task_id: str) -> None:
        """Make a new task's folder; a log left by an unreadable older record goes."""
        self._write(lambda: self._fresh_folder(task_id))

    def _fresh_folder(self, task_id: str) -> None:
        """The folder of a new task, without a stale log."""
        self.task_dir(task_id).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_path(task_id).unlink(missing_ok=True)

    def save(self, task_id: str, data: bytes) -> None:
        """Replace a task's task.json atomically."""
        self._write(lambda: write_private(self.task_dir(task_id) / TASK_FILE, data))

    def make_work_dir(self, task_id: str) -> Path:
        """Create (if needed) and return a task's work folder."""
        self.work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.work_dir(task_id)
        path.mkdir(exist_ok=True, mode=0o700)
        return path

    def remove_work_dir(self, task_id: str) -> None:
        """Delete a task's work folder, best effort (a script may have left odd files)."""
        shutil.rmtree(self.work_dir(task_id), ignore_errors=True)

    def delete(self, task_id: str) -> None:
        """Forget a task on disk: its state folder and its work folder."""
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)
        self.remove_work_dir(task_id)

    @staticmethod
    def _write(action: Callable[[], None]) -> None:
        """Run a write, translating OSError into `StateWriteError`."""
        try:
            action()
        except OSError as exc:
            raise StateWriteError(f"cannot write task state: {exc}") from exc


def encode(record: TaskRecord) -> bytes:
    """task.json's bytes for ``record``."""
    return json.dumps(record.to_json(), separators=(",", ":")).encode()


def to_prune(records: Iterable[TaskRecord], keep: int) -> list[TaskRecord]:
    """The ended tasks beyond the newest ``keep`` (by arrival), oldest first."""
    ended = sorted((record for record in records if record.ended), key=lambda record: record.arrival)
    return ended[: max(len(ended) - keep, 0)]


# --- the log --------------------------------------------------------------------------------


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
    """The append-only, numbered log of one task, with its recent lines in memory."""

    def __init__(self, path: Path, next_seq: int = 1, size: int = 0) -> None:
        """A log whose next line is ``next_seq`` and whose file holds ``size`` bytes."""
        self.path = path
        self.next_seq = next_seq
        self.size = size
        self._recent: deque[LogLine] = deque(maxlen=RECENT_LINES)
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
        """Number, write and flush a line; None when the disk refused it (logged)."""
        line = LogLine(self.next_seq, time, stream, step, text)
        data = json.dumps(line.to_json()).encode() + b"\n"  # ASCII-only: no encoding errors
        try:
            file = self._open()
            file.write(data)
            file.flush()
        except OSError as exc:
            self._undo_partial_write()
            event(log, "task.log_write_failed", logging.ERROR, path=self.path, reason=str(exc))
            return None
        if line.seq % INDEX_EVERY == 1:
            self._index[line.seq] = self.size
        self.size += len(data)
        self.next_seq += 1
        self._recent.append(line)
        return line

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

    def recent_after(self, since: int, limit: int, max_bytes: int) -> tuple[list[LogLine], bool] | None:
        """Lines with seq > since from memory, or None when they must be read from the file."""
        if since + 1 >= self.next_seq:
            return [], False
        if not self._recent or self._recent[0].seq > since + 1:
            return None
        start = max(since + 1 - self._recent[0].seq, 0)
        return _collect(islice(self._recent, start, None), since, self.next_seq, limit, max_bytes)

    def read_after(self, since: int, limit: int, max_bytes: int) -> tuple[list[LogLine], bool]:
        """Lines with seq > since from the file (blocking: call it in a thread)."""
        upto = self.next_seq  # lines appended meanwhile wait for the next call
        index = self._index.copy()  # the loop may add to it meanwhile; a copy is atomic
        starts = [seq for seq in index if seq <= since + 1]
        offset = index[max(starts)] if starts else 0
        try:
            with self.path.open("rb") as file:
                file.seek(offset)
                lines = self._indexed(_parse_lines(file, offset))
                return _collect(lines, since, upto, limit, max_bytes)
        except FileNotFoundError:
            return [], False

    def _indexed(self, lines: Iterator[tuple[int, LogLine]]) -> Iterator[LogLine]:
        """Pass lines through, noting the offsets the index wants."""
        for offset, line in lines:
            if line.seq % INDEX_EVERY == 1:
                self._index.setdefault(line.seq, offset)
            yield line


def _collect(
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
