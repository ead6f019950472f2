"""The task methods on the wire: what their params hold, and the answers' shapes.

This is the one place where the runner reads a request's ``params`` and builds an
answer's dict (`tentacle.runner.runner` only calls these), so that typed messages can
replace it without touching the rules. The methods::

    task.start   {plan}                                 -> {taskId, state}
    task.gate    {taskId, gateIndex, gateName}          -> {taskId, accepted: true}
    task.status  {taskId, logSince?, version?, wait?}   -> {taskId, state, version, gates, log, more}
    task.cancel  {taskId}                               -> {taskId, state}
    task.finish  {taskId}                               -> {taskId, state}

A task this tentacle does not know reads ``unknown-task`` in task.status, task.cancel
and task.finish; task.gate answers it with an `UnknownTaskError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tentacle.errors import TentacleError
from tentacle.protocol.plan import Plan, PlanError

UNKNOWN_TASK: Final = "unknown-task"
MAX_WAIT: Final = 25.0
# The task id names folders: one plain path component, never "." or "..".
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class TaskRequestError(TentacleError):
    """A task request the runner cannot act on: a bad plan, gate or parameter."""


class UnknownTaskError(TaskRequestError):
    """The request names a task this tentacle does not know."""


@dataclass(frozen=True)
class GateParams:
    """task.gate's params."""

    task_id: str
    gate_index: int
    gate_name: str


@dataclass(frozen=True)
class StatusParams:
    """task.status's params: a long poll for a newer ``version`` or lines after ``log_since``."""

    task_id: str
    log_since: int
    version: int
    wait: float


def read_start(params: Mapping[str, Any]) -> Plan:
    """task.start's plan, validated, with a task id that is safe as a folder name."""
    try:
        plan = Plan.from_json(params.get("plan"))
    except PlanError as exc:
        raise TaskRequestError(f"plan: {exc.message}", details=exc.details) from exc
    if not _TASK_ID.match(plan.task_id):
        raise TaskRequestError(
            "plan.taskId: must be 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return plan


def read_gate(params: Mapping[str, Any]) -> GateParams:
    """task.gate's params."""
    return GateParams(_text(params, "taskId"), _integer(params, "gateIndex"), _text(params, "gateName"))


def read_status(params: Mapping[str, Any]) -> StatusParams:
    """task.status's params."""
    return StatusParams(
        _text(params, "taskId"),
        _integer(params, "logSince", default=0),
        _integer(params, "version", default=0),
        _seconds(params, "wait", MAX_WAIT),
    )


def read_task_id(params: Mapping[str, Any]) -> str:
    """The taskId of task.cancel and task.finish."""
    return _text(params, "taskId")


def start_answer(task_id: str, state: str) -> dict[str, Any]:
    """task.start's answer: the task's state now."""
    return {"taskId": task_id, "state": state}


def gate_answer(task_id: str) -> dict[str, Any]:
    """task.gate's answer: the gate is remembered (on disk)."""
    return {"taskId": task_id, "accepted": True}


def stop_answer(task_id: str, state: str) -> dict[str, Any]:
    """task.cancel's and task.finish's answer: the task's state now (or ``unknown-task``)."""
    return {"taskId": task_id, "state": state}


def status_answer(
    task_id: str,
    state: str,
    version: int,
    gates: Sequence[Mapping[str, Any]],
    log: Sequence[Mapping[str, Any]],
    more: bool,
) -> dict[str, Any]:
    """task.status's answer; ``more`` says that lines after the last one are waiting."""
    return {
        "taskId": task_id,
        "state": state,
        "version": version,
        "gates": list(gates),
        "log": list(log),
        "more": more,
    }


def unknown_task_status(task_id: str) -> dict[str, Any]:
    """The task.status answer for a task this tentacle has no record of."""
    return status_answer(task_id, UNKNOWN_TASK, 0, [], [], False)


def _text(params: Mapping[str, Any], key: str) -> str:
    """A required non-empty string parameter."""
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise TaskRequestError(f"{key}: must be a non-empty string")
    return value


def _integer(params: Mapping[str, Any], key: str, default: int | None = None) -> int:
    """A non-negative integer parameter (required unless it has a default)."""
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TaskRequestError(f"{key}: must be an integer >= 0")
    return value


def _seconds(params: Mapping[str, Any], key: str, high: float) -> float:
    """A number of seconds from 0 to ``high`` (0 when absent)."""
    value = params.get(key, 0)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= high:
        raise TaskRequestError(f"{key}: must be a number of seconds from 0 to {high:g}")
    return float(value)
