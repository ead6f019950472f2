"""What a rogue tentacle answers, method by method, as told by a `Behaviour`.

The answers are the protocol's own (a plausible ping, task.gate accepted, task.status
with its gates and lines) bent by the behaviour of the method asked (see
rigs.rogue_agent for the kinds). `Answers` remembers what a real tentacle would: the
gates each task was given and whether it was cancelled, and every method asked. It
opens no socket: the rogue's transports (listening and polling, in rigs.rogue_agent)
send what `body` yields, the way they are told to.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

CHUNK = 1024 * 1024
KINDS = ("normal", "huge", "malformed", "out_of_range", "silent", "dribble", "flood", "hold")


@dataclass
class Behaviour:
    """How the rogue answers one method (the kinds are told in rigs.rogue_agent's docstring)."""

    kind: str = "normal"
    size: int = 0  # huge: bytes
    delay: float = 0.2  # dribble: seconds between bytes
    lines: int = 10_000  # flood: lines in all
    width: int = 100  # flood: characters per line
    sized: bool = True  # huge, listening: with a Content-Length (False: chunked)

    @classmethod
    def parse(cls, text: str) -> tuple[str, Behaviour]:
        """``method=kind[:size]`` as on the command line."""
        method, _, spec = text.partition("=")
        kind, _, size = spec.partition(":")
        if kind not in KINDS:
            raise ValueError(f"{text}: kind must be one of {', '.join(KINDS)}")
        return method, cls(kind=kind, size=int(size or 0), lines=int(size or 10_000))


@dataclass
class _Task:
    """What the rogue remembers of a task: the gates it was given, its lines, whether it was cancelled."""

    gates: dict[int, str] = field(default_factory=dict)
    version: int = 1
    cancelled: bool = False


class Answers:
    """The rogue's answers by method (`behaviours`), its memory of tasks, and every method it was asked."""

    def __init__(self, behaviours: dict[str, Behaviour], identity: Callable[[], tuple[str, str]]) -> None:
        """``identity`` gives the registered name and mode, as a ping tells them."""
        self.behaviours = behaviours
        self.tasks: dict[str, _Task] = {}
        self.calls: list[str] = []  # every method asked, in order
        self._identity = identity

    def behaviour(self, method: str) -> Behaviour:
        """How to answer ``method`` now."""
        return self.behaviours.get(method, Behaviour())

    def answer(self, request: dict[str, Any]) -> bytes:
        """The whole answer to a request, as the behaviour says (for all kinds but huge and silent)."""
        method, rid = request.get("method", ""), request.get("id", "x")
        kind = self.behaviour(method).kind
        if kind == "malformed":
            return (
                b'{"kind": "response", "id": '
                + json.dumps(rid).encode()
                + b', "result": {"taskId": [not json'
            )
        result = self._result(method, request.get("params") or {})
        if kind == "out_of_range":
            result = _out_of_range(method, result)
        return json.dumps({"kind": "response", "id": rid, "result": result}).encode()

    def _result(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        task_id = str(params.get("taskId") or params.get("plan", {}).get("taskId") or "none")
        task = self.tasks.setdefault(task_id, _Task())
        if method == "ping":
            name, mode = self._identity()
            return {"name": name, "mode": mode, "version": "rogue", "time": time.time()}
        if method == "task.gate":
            task.gates[int(params["gateIndex"])] = str(params["gateName"])
            task.version += 1
            return {"taskId": task_id, "accepted": True}
        if method in ("task.cancel", "task.finish"):
            task.cancelled = task.cancelled or method == "task.cancel"
            task.version += 1
            return {"taskId": task_id, "state": "cancelled" if task.cancelled else "success"}
        if method == "task.status":
            return self._status(task_id, task, params)
        return {"taskId": task_id, "state": "running"}

    def _status(self, task_id: str, task: _Task, params: dict[str, Any]) -> dict[str, Any]:
        flood = self.behaviour("task.status")
        since = int(params.get("logSince", 0))
        lines: list[dict[str, Any]] = []
        if flood.kind == "flood":
            last = min(flood.lines, since + 1000)
            text = "x" * flood.width
            lines = [
                {
                    "seq": seq,
                    "time": time.time(),
                    "stream": "stdout",
                    "step": "flood",
                    "text": f"{seq} {text}",
                }
                for seq in range(since + 1, last + 1)
            ]
        more = bool(lines) and lines[-1]["seq"] < flood.lines
        holding = flood.kind == "hold" or (flood.kind == "flood" and more)
        state = "cancelled" if task.cancelled else ("running" if holding else "success")
        gates = [{"index": i, "name": n, "state": state, "reason": ""} for i, n in sorted(task.gates.items())]
        return {
            "taskId": task_id,
            "state": "running",
            "version": task.version,
            "gates": gates,
            "log": lines,
            "more": more,
        }

    async def prepared(self, request: dict[str, Any]) -> bytes:
        """The answer, after a short long-poll wait for task.status (as a real tentacle waits)."""
        if self.behaviour("task.status").kind != "flood" and request.get("method") == "task.status":
            await asyncio.sleep(min(float((request.get("params") or {}).get("wait", 0)), 0.5))
        return self.answer(request)

    async def body(self, request: dict[str, Any], data: bytes | None = None) -> AsyncIterator[bytes]:
        """The answer's bytes as the behaviour sends them."""
        behaviour = self.behaviour(request.get("method", ""))
        if behaviour.kind == "silent":
            await asyncio.Event().wait()
        if behaviour.kind == "huge":
            async for chunk in huge(request.get("id", "x"), behaviour.size):
                yield chunk
            return
        data = data if data is not None else await self.prepared(request)
        if behaviour.kind == "dribble":
            for index in range(len(data)):
                yield data[index : index + 1]
                await asyncio.sleep(behaviour.delay)
            return
        yield data


async def huge(request_id: str, size: int) -> AsyncIterator[bytes]:
    """``size`` bytes that start like a response and never finish being one."""
    head = b'{"kind": "response", "id": ' + json.dumps(request_id).encode() + b', "result": {"name": "'
    yield head
    sent, block = len(head), b"A" * CHUNK
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        yield piece
        sent += len(piece)


def _out_of_range(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """The same result with a field out of its range (what a broken or hostile agent sends)."""
    if method == "task.status":
        line = {"seq": 2**70, "time": time.time(), "stream": "stdout", "step": "x", "text": "overflow"}
        return {**result, "log": [line], "more": False}
    if method == "ping":
        return {**result, "time": -1}
    return {**result, "taskId": "../" * 100}
