"""A task's state on disk: ``tasks/<taskId>/task.json`` (this module) and ``log.jsonl`` (task_log).

How it works::

    task.json   the whole record (plan, state, gates, version, log position, the step
                running), rewritten atomically (write_private: temp file, fsync, rename)
                on every change, so a crash leaves the old record or the new one
    log.jsonl   one JSON object per log line (see tentacle.runner.task_log); task.json
                remembers the log's byte size at its save

The format is ``"format": 1`` and stays readable: a tentacle upgraded in place loads
the task.json files its previous version wrote (tests/test_runner_disk.py keeps one).
Those said ``done`` for every task that ended but was not cancelled; such a task reads
as the machine would end it now (`ended_state`: success, failed or cancelled by its gates).

This module does blocking file I/O: the runner calls it from its state writer thread
(tentacle.runner.state_writer) or another worker thread, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from tentacle.common.atomicfile import write_private
from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.protocol.plan import Plan
from tentacle.protocol.runner_machine import STOPS, Gate, TaskEntry, ended_state, work_gates
from tentacle.protocol.states import GateState, TaskState

log = logging.getLogger("tentacle.runner.runner")

FORMAT: Final = 1
LEGACY_ENDED: Final = "done"  # how task.json said "ended" before the one vocabulary of states
TASK_FILE: Final = "task.json"
LOG_FILE: Final = "log.jsonl"

_T = TypeVar("_T")


class StateError(TentacleError, ValueError):
    """A task.json that cannot be read back (hand-edited, or from another version)."""


class StateWriteError(TentacleError):
    """Task state could not be written; nothing that depends on it may go ahead."""


@dataclass(eq=False)
class TaskRecord:
    """Everything task.json holds: the plan, the machine's entry, and what the runner adds."""

    plan: Plan
    entry: TaskEntry
    version: int = 1
    log_seq: int = 1
    log_bytes: int = 0
    current_step: int | None = None
    packages: dict[str, str] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        """The task's id, from its plan."""
        return self.plan.task_id

    @cached_property
    def plan_json(self) -> dict[str, Any]:
        """The plan's JSON form, built once (a plan never changes)."""
        return self.plan.to_json()

    def to_json(self) -> dict[str, Any]:
        """The task.json form (logSeq and logBytes as this record last knew them)."""
        entry = self.entry
        return {
            "format": FORMAT,
            "plan": self.plan_json,
            "arrival": entry.arrival,
            "state": entry.state.value,
            "gates": [gate.to_json() for gate in entry.gates.values()],
            "version": self.version,
            "logSeq": self.log_seq,
            "logBytes": self.log_bytes,
            "currentStep": self.current_step,
            "packages": dict(self.packages),
            "stop": entry.stop,
            "finished": entry.finished,
        }

    @classmethod
    def from_json(cls, obj: object) -> TaskRecord:
        """Read back `to_json`'s form; raises `StateError` (or `PlanError`, a ValueError)."""
        body = _mapping(obj, "document")
        if body.get("format") != FORMAT:
            raise StateError(f"format: must be {FORMAT}")
        gates = [_read_gate(gate) for gate in _get(body, "gates", list)]
        packages = _get(body, "packages", dict)
        if not all(isinstance(value, str) for value in packages.values()):
            raise StateError("packages: every value must be a path")
        stop = body.get("stop")
        if stop is not None and stop not in STOPS:
            raise StateError("stop: must be null, 'cancel' or 'finish'")
        current = body.get("currentStep")
        if current is not None and (not isinstance(current, int) or isinstance(current, bool)):
            raise StateError("currentStep: must be null or an integer")
        plan = Plan.from_json(body.get("plan"))
        entry = TaskEntry(
            task_id=plan.task_id,
            arrival=_get(body, "arrival", int),
            work=work_gates(plan),
            gates={gate.index: gate for gate in gates},
            stop=stop,
            finished=_get(body, "finished", bool),
        )
        state = _choice(body, "state", (*TaskState, LEGACY_ENDED))
        entry.state = ended_state(entry) if state == LEGACY_ENDED else TaskState(state)
        return cls(
            plan=plan,
            entry=entry,
            version=_get(body, "version", int),
            log_seq=max(_get(body, "logSeq", int), 1),
            log_bytes=max(_get(body, "logBytes", int), 0),
            current_step=current,
            packages=cast(dict[str, str], packages),
        )


def _read_gate(obj: object) -> Gate:
    """A gate of task.json; raises `StateError`."""
    gate = _mapping(obj, "gates[]")
    state = GateState(_choice(gate, "state", tuple(GateState)))
    return Gate(_get(gate, "index", int), _get(gate, "name", str), state, _get(gate, "reason", str))


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


def encode(document: Mapping[str, Any]) -> bytes:
    """task.json's bytes for a `TaskRecord.to_json` document."""
    return json.dumps(document, separators=(",", ":")).encode()


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
        return sorted(records, key=lambda record: record.entry.arrival)

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
        """Forget a task's state on disk (its work folder goes with `remove_work_dir`)."""
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)

    @staticmethod
    def _write(action: Callable[[], None]) -> None:
        """Run a write, translating OSError into `StateWriteError`."""
        try:
            action()
        except OSError as exc:
            raise StateWriteError(f"cannot write task state: {exc}") from exc
