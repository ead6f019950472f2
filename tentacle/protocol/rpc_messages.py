"""Every RPC method's params and result, as typed structs, and the one table that pairs them.

The methods (camelCase on the wire; ``?`` marks a field with a default)::

    ping         {}                                    -> {name, mode, version, time}
    task.start   {plan}                                -> {taskId, state}
    task.gate    {taskId, gateIndex, gateName}         -> {taskId, accepted}
    task.status  {taskId, logSince?, version?, wait?}  -> {taskId, state, version, gates, log, more}
    task.cancel  {taskId}                              -> {taskId, state}
    task.finish  {taskId}                              -> {taskId, state}
    trust.rotate {keyId, publicKey}                    -> {keyId}

`SIGNED_METHODS` are those a tentacle with a pinned signing key runs only when signed
(`tentacle.protocol.signing`): everything that makes it act. trust.rotate hands it the
server's next signing key, signed by the one it pinned.

A task's state is `tentacle.protocol.states.TaskState`, the one vocabulary of the server,
the API and the tentacle; a task the tentacle does not know reads ``unknown-task`` (and
only that) in task.status, task.cancel and task.finish (`unknown_task_status`); task.gate
answers it with an error. task.start's plan is a `Plan`: decoding checks its shape, and
`read_params` then its rules (`check_start`), so a handler only ever sees a valid plan.

Bounds live in the types: counters (``seq``, ``index``, ``version``) are integers from
0 to 2**53, the largest every JSON reader keeps exact, so a rogue peer's ``seq = 2**70``
is a decode error naming ``result.log[0].seq`` and not an overflow deeper in. A `Call`
names a method with its params and result types; `read_params` and `read_result` decode
the raw bodies of the envelope (`tentacle.protocol.messages`) into them. Pure.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

import msgspec

from tentacle.errors import RemoteError
from tentacle.protocol.messages import MessageError, Method, Request, Response, parse
from tentacle.protocol.plan import Plan, PlanError
from tentacle.protocol.process import MAX_STEPS
from tentacle.protocol.signing import KeyId, PublicKeyText
from tentacle.protocol.states import ACQUISITION, PRE_ACQUISITION, GateState, TaskState
from tentacle.protocol.wire import Wire

MAX_SAFE_INTEGER: Final = 2**53
MAX_WAIT: Final = 25.0  # seconds a task.status may be held open
MAX_LOG_LINES: Final = 1000  # lines in one task.status answer
MAX_GATES: Final = MAX_STEPS + 2  # a step gate per step, preAcquisition and acquisition
# A script's line is at most 64 KiB (tentacle.runner.scripts.LINE_LIMIT); masking may
# lengthen it (a short secret becomes the longer mask), so text gets room to spare.
MAX_TEXT: Final = 1024 * 1024
MAX_NAME: Final = 4096  # a step's name is at most 200 characters, before masking

# A task id names folders on the tentacle: one plain path component, never "." or "..".
TASK_ID: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]
TaskId = Annotated[str, msgspec.Meta(pattern=TASK_ID)]
GateName = Annotated[
    str, msgspec.Meta(pattern=rf"^({PRE_ACQUISITION}|{ACQUISITION}|step:(0|[1-9][0-9]{{0,5}}))$")
]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
Mode = Literal["listening", "polling"]
P = TypeVar("P", bound=Wire)
R = TypeVar("R", bound=Wire)


UNKNOWN_TASK: Final = "unknown-task"
# What task.status, task.cancel and task.finish answer: a `TaskState`, or UNKNOWN_TASK for
# an id the tentacle has no record of. Spelled out because msgspec takes one string-like
# type per field (not an enum and a Literal together); a test keeps it in step with TaskState.
ReportedState = Literal["queued", "running", "success", "failed", "cancelled", "unknown-task"]


class LogStream(StrEnum):
    """Where a log line came from: the script's two pipes, or the runner itself."""

    STDOUT = "stdout"
    STDERR = "stderr"
    SYSTEM = "system"


class NoParams(Wire, frozen=True):
    """The params of a method that takes none (ping)."""


class PingResult(Wire, frozen=True):
    """ping: who answered, in which mode, which version, and its clock."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    mode: Mode
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    time: Annotated[float, msgspec.Meta(ge=0)]


class StartParams(Wire, frozen=True):
    """task.start: the target's plan (its rules checked by `check_start` as it is read)."""

    plan: Plan


class StartResult(Wire, frozen=True):
    """task.start: the task's state now (a repeat answers the current state)."""

    task_id: TaskId
    state: TaskState


class GateParams(Wire, frozen=True):
    """task.gate: open gate ``gate_index`` (named ``gate_name``) of a task on this target."""

    task_id: TaskId
    gate_index: Count
    gate_name: GateName


class GateResult(Wire, frozen=True):
    """task.gate: the gate is remembered (on disk)."""

    task_id: TaskId
    accepted: bool


class StatusParams(Wire, frozen=True):
    """task.status: a long poll, up to ``wait`` s, for a newer ``version`` or lines after ``log_since``."""

    task_id: TaskId
    log_since: Count = 0
    version: Count = 0
    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] = 0.0


class GateReport(Wire, frozen=True):
    """One gate that started on the tentacle: its state and why."""

    index: Count
    name: GateName
    state: GateState
    reason: Text = ""


class LogLine(Wire, frozen=True):
    """One numbered log line of a task on a tentacle (already masked there)."""

    seq: Count
    time: Annotated[float, msgspec.Meta(ge=0)]
    stream: LogStream
    step: Name
    text: Text


class StatusResult(Wire, frozen=True):
    """task.status: the task's state, its started gates, and log lines; ``more``: lines are waiting."""

    task_id: TaskId
    state: ReportedState
    version: Count
    gates: Annotated[list[GateReport], msgspec.Meta(max_length=MAX_GATES)]
    log: Annotated[list[LogLine], msgspec.Meta(max_length=MAX_LOG_LINES)]
    more: bool


class StopParams(Wire, frozen=True):
    """task.cancel and task.finish: which task."""

    task_id: TaskId


class StopResult(Wire, frozen=True):
    """task.cancel and task.finish: the task's state now, or ``unknown-task``."""

    task_id: TaskId
    state: ReportedState


def reported(state: TaskState) -> ReportedState:
    """A known task's state as task.status, task.cancel and task.finish report it."""
    return state.value


class RotateParams(Wire, frozen=True):
    """trust.rotate: pin this signing key from now on (the request is signed by the pinned one)."""

    key_id: KeyId
    public_key: PublicKeyText


class RotateResult(Wire, frozen=True):
    """trust.rotate: the key now pinned."""

    key_id: KeyId


def unknown_task_status(task_id: str) -> StatusResult:
    """The task.status answer for a task this tentacle has no record of."""
    return StatusResult(task_id=task_id, state=UNKNOWN_TASK, version=0, gates=[], log=[], more=False)


class BadAnswer(RemoteError):
    """A peer's answer that does not fit its type: a bug or a stranger on that side.

    Not retryable: asking again gets the same answer. ``details`` name the peer and the path.
    """

    CODE = "bad-answer"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=self.CODE, status=502, details=details)
        self.retryable = False


@dataclass(frozen=True)
class Call(Generic[P, R]):
    """A method with the types of its params and of its result.

    ``check(params, raw)``, when given, checks what the types cannot say once the params
    decoded (``raw`` is their JSON), raising `MessageError` naming the path.
    """

    method: Method
    params: type[P]
    result: type[R]
    check: Callable[[P, msgspec.Raw], None] | None = None

    def request(self, request_id: str, params: P) -> Request:
        """The request envelope of this call."""
        return Request.of(request_id, self.method, params)


def check_start(params: StartParams, raw: msgspec.Raw) -> None:
    """task.start's plan: its rules, every field spelled out, a task id fit to name a folder."""
    try:
        Plan.from_json(msgspec.json.decode(raw).get("plan"))  # the same plan, checked as the disk reads it
    except PlanError as exc:
        path = f"params.plan.{exc.problems[0][0]}" if exc.problems else "params.plan"
        problems = "; ".join(f"params.plan.{where}: {what}" for where, what in exc.problems[:20])
        raise MessageError(problems or f"params.plan: {exc.message}", details={"path": path}) from exc
    if not re.match(TASK_ID, params.plan.task_id):
        raise MessageError(
            "params.plan.taskId: must be 1-200 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit",
            details={"path": "params.plan.taskId"},
        )


PING: Final = Call(Method.PING, NoParams, PingResult)
TASK_START: Final = Call(Method.TASK_START, StartParams, StartResult, check_start)
TASK_GATE: Final = Call(Method.TASK_GATE, GateParams, GateResult)
TASK_STATUS: Final = Call(Method.TASK_STATUS, StatusParams, StatusResult)
TASK_CANCEL: Final = Call(Method.TASK_CANCEL, StopParams, StopResult)
TASK_FINISH: Final = Call(Method.TASK_FINISH, StopParams, StopResult)
TRUST_ROTATE: Final = Call(Method.TRUST_ROTATE, RotateParams, RotateResult)
CALLS: Final[dict[Method, Call[Any, Any]]] = {
    call.method: call
    for call in (PING, TASK_START, TASK_GATE, TASK_STATUS, TASK_CANCEL, TASK_FINISH, TRUST_ROTATE)
}
SIGNED_METHODS: Final = frozenset(
    {Method.TASK_START, Method.TASK_GATE, Method.TASK_CANCEL, Method.TASK_FINISH, Method.TRUST_ROTATE}
)


@functools.cache
def _decoder(kind: type[Wire]) -> msgspec.json.Decoder[Any]:
    """One decoder per struct, made at its first use (an idle tentacle decodes few kinds)."""
    return msgspec.json.Decoder(kind)


def read_params(call: Call[P, Any], request: Request) -> P:
    """The request's params as the call's params struct; `MessageError` names ``params.<path>``."""
    decoded: P = parse(request.params, _decoder(call.params), "params")
    if call.check is not None:
        call.check(decoded, request.params)
    return decoded


def read_result(call: Call[Any, R], response: Response, peer: str) -> R:
    """The response's result as the call's result struct.

    An error response raises `RemoteError` with the peer's code and message (not
    retryable: the peer understood and said no). A result that does not fit raises
    `BadAnswer`, naming ``peer`` and the path (``result.log[0].seq``).
    """
    if response.error is not None:
        raise RemoteError(f"{call.method}: {response.error.message}", code=response.error.code, status=400)
    try:
        decoded: R = parse(response.result, _decoder(call.result), "result")
    except MessageError as exc:
        raise bad_answer(peer, call.method, exc) from exc
    return decoded


def bad_answer(peer: str, method: str, error: MessageError) -> BadAnswer:
    """The error for a malformed answer from ``peer`` to ``method``."""
    return BadAnswer(
        f"{peer} answered {method} with a malformed message: {error.message}",
        details={"machine": peer, "method": str(method), **error.details},
    )
