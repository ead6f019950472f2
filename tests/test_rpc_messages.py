"""The typed RPC contract: each method's params and result, their bounds, and the service serving them."""

from __future__ import annotations

import logging
from typing import Any, get_args

import msgspec
import pytest

from tentacle.agent.rpc import Service
from tentacle.errors import RemoteError
from tentacle.protocol import messages
from tentacle.protocol.messages import MessageError, Method, Request, Response
from tentacle.protocol.plan import Plan, PlannedStep
from tentacle.protocol.process import Script
from tentacle.protocol.rpc_messages import (
    CALLS,
    PING,
    TASK_CANCEL,
    TASK_FINISH,
    TASK_GATE,
    TASK_START,
    TASK_STATUS,
    UNKNOWN_TASK,
    BadAnswer,
    Call,
    GateParams,
    GateReport,
    GateResult,
    LogLine,
    LogStream,
    NoParams,
    PingResult,
    ReportedState,
    StartParams,
    StartResult,
    StatusParams,
    StatusResult,
    StopParams,
    StopResult,
    read_params,
    read_result,
    reported,
    unknown_task_status,
)
from tentacle.protocol.states import GateState, TaskState
from tentacle.protocol.wire import Wire

PLAN = Plan(
    task_id="t-1",
    kind="deployment",
    project_name="Shop",
    release_version="1.0",
    environment_name="Production",
    machine_name="web-01",
    steps=(PlannedStep(index=1, name="Say hi", script=Script("bash", "echo hi")),),
)

LINE = LogLine(seq=1, time=1.5, stream=LogStream.STDOUT, step="Say hi", text="hi")
GATE = GateReport(index=2, name="step:1", state=GateState.SUCCESS, reason="exit code 0")
EXAMPLES: list[tuple[Call[Any, Any], Wire, Wire]] = [
    (PING, NoParams(), PingResult(name="web-01", mode="polling", version="1.0", time=2.5)),
    (
        TASK_START,
        StartParams(plan=PLAN),
        StartResult(task_id="t-1", state=TaskState.QUEUED),
    ),
    (
        TASK_GATE,
        GateParams(task_id="t-1", gate_index=2, gate_name="step:1"),
        GateResult(task_id="t-1", accepted=True),
    ),
    (
        TASK_STATUS,
        StatusParams(task_id="t-1", log_since=3, version=4, wait=20),
        StatusResult(task_id="t-1", state="success", version=5, gates=[GATE], log=[LINE], more=True),
    ),
    (TASK_CANCEL, StopParams(task_id="t-1"), StopResult(task_id="t-1", state="cancelled")),
    (TASK_FINISH, StopParams(task_id="t-1"), StopResult(task_id="t-1", state="unknown-task")),
]


def _sent(call: Call[Any, Any], params: Any) -> Request:
    """A request for ``call`` with ``params`` (a struct or plain JSON), through its JSON bytes."""
    decoded = messages.decode(messages.encode(Request.of("r1", call.method, params)))
    assert isinstance(decoded, Request)
    return decoded


def _answered(result: Any) -> Response:
    """A response carrying ``result`` (a struct or plain JSON), through its JSON bytes."""
    decoded = messages.decode(messages.encode(Response.success("r1", result)))
    assert isinstance(decoded, Response)
    return decoded


@pytest.mark.parametrize(("call", "params", "result"), EXAMPLES, ids=[c.method for c, _, _ in EXAMPLES])
def test_every_method_round_trips_its_params_and_result(
    call: Call[Any, Any], params: Wire, result: Wire
) -> None:
    """Each method's params and result survive the envelope and come back as the same structs."""
    assert read_params(call, _sent(call, params)) == params
    assert read_result(call, _answered(result), "web-01") == result


def test_every_method_has_a_call() -> None:
    """The table pairs every method with its types; nothing is served untyped."""
    assert set(CALLS) == set(Method)


def test_params_travel_in_camel_case_with_defaults() -> None:
    """task.status's params are camelCase, and the optional ones default to 0."""
    request = TASK_STATUS.request("r1", StatusParams(task_id="t-1"))
    assert bytes(request.params) == b'{"taskId":"t-1","logSince":0,"version":0,"wait":0.0}'
    assert read_params(TASK_STATUS, _sent(TASK_STATUS, {"taskId": "t-1"})) == StatusParams(task_id="t-1")


def test_reported_states_are_the_task_states_and_unknown_task() -> None:
    """One vocabulary: a tentacle reports TaskState's values, and unknown-task for an id it does not know."""
    assert get_args(ReportedState) == (*TaskState, UNKNOWN_TASK)
    assert [reported(state) for state in TaskState] == [state.value for state in TaskState]


def test_the_unknown_task_answer_is_a_status() -> None:
    """A task the tentacle never heard of is a well-formed status that says so."""
    answer = read_result(TASK_STATUS, _answered(unknown_task_status("t-9")), "web-01")
    assert (answer.state, answer.version, answer.gates, answer.log) == ("unknown-task", 0, [], [])


GATE_OK = {"taskId": "t-1", "gateIndex": 2, "gateName": "step:1"}


@pytest.mark.parametrize(
    ("call", "params", "message"),
    [
        (TASK_GATE, {**GATE_OK, "gateIndex": "2"}, "params.gateIndex: expected an integer, got a string"),
        (
            TASK_GATE,
            {**GATE_OK, "gateIndex": True},
            "params.gateIndex: expected an integer, got true or false",
        ),
        (TASK_GATE, {**GATE_OK, "gateIndex": -1}, "params.gateIndex: expected an integer >= 0"),
        (
            TASK_GATE,
            {**GATE_OK, "gateIndex": 2**53 + 1},
            "params.gateIndex: expected an integer <= 9007199254740992",
        ),
        (
            TASK_GATE,
            {**GATE_OK, "gateIndex": 2**70},
            "params.gateIndex: expected an integer <= 9007199254740992",
        ),
        (
            TASK_GATE,
            {**GATE_OK, "gateName": "deploy everything"},
            "params.gateName: expected a string matching",
        ),
        (TASK_GATE, {"taskId": "t-1", "gateIndex": 2}, "params.gateName: required"),
        (TASK_STATUS, {"taskId": "t-1", "wait": 26}, "params.wait: expected a number <= 25.0"),
        (TASK_STATUS, {"taskId": "../escape"}, "params.taskId: expected a string matching"),
        (TASK_STATUS, {"taskId": ""}, "params.taskId: expected a string matching"),
        (TASK_START, {}, "params.plan: required"),
        (TASK_START, {"plan": "x"}, "params.plan: expected an object, got a string"),
        (TASK_START, {"plan": {**PLAN.to_json(), "kind": "x"}}, "params.plan.kind: invalid enum value 'x'"),
        (TASK_START, {"plan": {**PLAN.to_json(), "taskId": "a/b"}}, "params.plan.taskId: must be 1-200"),
        (
            TASK_START,
            {"plan": {**PLAN.to_json(), "kind": "deployment", "releaseVersion": ""}},
            "params.plan.releaseVersion: must be a non-empty string in a deployment",
        ),
        (TASK_CANCEL, {"taskId": "t-1", "reason": "why"}, "params.reason: unknown field"),
        (PING, {"x": 1}, "params.x: unknown field"),
        (PING, [], "params: expected an object, got a list"),
    ],
)
def test_bad_params_are_refused_naming_the_path(call: Call[Any, Any], params: Any, message: str) -> None:
    """Wrong types, missing and unknown fields, and out-of-range integers are refused with their path."""
    with pytest.raises(MessageError) as caught:
        read_params(call, _sent(call, params))
    assert caught.value.message.startswith(message)
    assert caught.value.details["path"] == message.split(":")[0]


STATUS_OK: dict[str, Any] = {
    "taskId": "t-1",
    "state": "running",
    "version": 1,
    "gates": [],
    "log": [],
    "more": False,
}
LINE_OK = {"seq": 1, "time": 1.5, "stream": "stdout", "step": "", "text": "hi"}
HUGE = "expected an integer <= 9007199254740992"


def _status(**changes: Any) -> dict[str, Any]:
    """A task.status result with some fields changed."""
    return {**STATUS_OK, **changes}


@pytest.mark.parametrize(
    ("result", "path", "problem"),
    [
        (_status(log=[{**LINE_OK, "seq": 2**70}]), "result.log[0].seq", HUGE),
        (_status(log=[{**LINE_OK, "seq": 1.5}]), "result.log[0].seq", "expected an integer, got a number"),
        (_status(log=[{**LINE_OK, "stream": "tty"}]), "result.log[0].stream", "invalid enum value 'tty'"),
        (_status(log=[LINE_OK] * 1001), "result.log", "expected a list of length <= 1000"),
        (
            _status(gates=[{"index": 0, "name": "acquisition", "state": "exploded"}]),
            "result.gates[0].state",
            "invalid enum value 'exploded'",
        ),
        (_status(state="done"), "result.state", "invalid enum value 'done'"),
        (_status(version=-1), "result.version", "expected an integer >= 0"),
        ({k: v for k, v in STATUS_OK.items() if k != "more"}, "result.more", "required"),
        ([], "result", "expected an object, got a list"),
    ],
)
def test_a_malformed_result_is_a_bad_answer_naming_the_machine_and_path(
    result: Any, path: str, problem: str
) -> None:
    """A rogue answer fails that call, not retryable, with the machine, the method and the path."""
    with pytest.raises(BadAnswer) as caught:
        read_result(TASK_STATUS, _answered(result), "web-01")
    error = caught.value
    assert error.message == f"web-01 answered task.status with a malformed message: {path}: {problem}"
    assert (error.details["machine"], error.details["path"], error.retryable) == ("web-01", path, False)


def test_an_error_answer_is_a_remote_error_with_its_code() -> None:
    """An error response is the peer's refusal: its code and message, not retryable."""
    with pytest.raises(RemoteError) as caught:
        read_result(TASK_GATE, Response.failure("r1", "UnknownTaskError", "unknown task 't-9'"), "web-01")
    assert (caught.value.remote_code, caught.value.message) == (
        "UnknownTaskError",
        "task.gate: unknown task 't-9'",
    )
    assert not isinstance(caught.value, BadAnswer) and not caught.value.retryable


# --- the service layer ------------------------------------------------------------------


async def _ask(service: Service, method: str, params: Any = None) -> dict[str, Any]:
    """The plain JSON of the service's answer to one request."""
    response = await service.handle(Request.of("r1", method, params))
    answer: dict[str, Any] = msgspec.json.decode(messages.encode(response))
    return answer


async def test_the_service_answers_ping_with_a_typed_result() -> None:
    """ping is served typed: the answer decodes as a PingResult."""
    response = await Service("web-01", "listening").handle(PING.request("r1", NoParams()))
    answer = read_result(PING, response, "web-01")
    assert (answer.name, answer.mode) == ("web-01", "listening")


async def test_typed_handlers_get_params_structs_and_a_crash_is_not_leaked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler gets its params struct with defaults; a handler's bug is logged, answered generically."""
    seen: list[StatusParams] = []

    async def status(params: StatusParams) -> StatusResult:
        seen.append(params)
        raise RuntimeError("internal detail /var/lib/secret")

    service = Service("web-01", "polling")
    service.serve(TASK_STATUS, status)
    with caplog.at_level(logging.ERROR):
        answer = await _ask(service, "task.status", {"taskId": "t-1"})
    assert seen == [StatusParams(task_id="t-1")]
    assert answer["error"] == {"code": "internal", "message": "the tentacle failed to handle the request"}
    assert "service.handler_crashed method=task.status" in caplog.text


async def test_the_service_refuses_bad_params_and_unserved_methods() -> None:
    """Params that break their type never reach the handler; a method nobody serves is unknown-method."""
    called: list[GateParams] = []

    async def gate(params: GateParams) -> GateResult:
        called.append(params)
        return GateResult(task_id=params.task_id, accepted=True)

    service = Service("web-01", "polling")
    service.serve(TASK_GATE, gate)
    refused = await _ask(service, "task.gate", {**GATE_OK, "gateIndex": 2**70})
    assert refused["error"]["message"] == "params.gateIndex: expected an integer <= 9007199254740992"
    assert called == []
    assert (await _ask(service, "task.gate", GATE_OK))["result"] == {"taskId": "t-1", "accepted": True}
    unserved = await _ask(service, "task.cancel", {"taskId": "t-1"})
    assert unserved["error"] == {"code": "unknown-method", "message": "unknown method 'task.cancel'"}
