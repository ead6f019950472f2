"""The runner's state on disk: old task.json files, recovery off the event loop, lines before states."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.tasks_helpers import EVERYTHING_READ, FINAL, Agent, gate_of, make_plan, step, texts

pytestmark = pytest.mark.timeout(60)

# A task.json as the runner before the pure machine wrote it (format 1): a step was
# running when the process died, after a successful acquisition.
OLD_TASK_JSON = (
    '{"format":1,"plan":{"taskId":"t-old","kind":"deployment","projectName":"OctoPetShop",'
    '"releaseVersion":"1.2.3","environmentName":"Production","machineName":"web-01","steps":'
    '[{"index":1,"name":"Deploy web","phase":"deployment","script":{"syntax":"bash","body":'
    '"echo hi"},"package":{"id":"Web","version":"1.0.0","sha512":"' + "a" * 128 + '","size":1,'
    '"fileName":"Web.1.0.0.zip","feed":"builtin","acquisition":"push","mirrors":[]},'
    '"timeoutSeconds":3600}],"variables":[]},"arrival":7,"state":"running","gates":[{"index":1,'
    '"name":"acquisition","state":"success","reason":"1 package(s) acquired"},{"index":2,'
    '"name":"step:1","state":"running","reason":""}],"version":9,"logSeq":5,"logBytes":LOG_BYTES,'
    '"currentStep":1,"packages":{"Web/1.0.0":"/var/lib/tentacle/packages/Web.1.0.0.zip"},'
    '"stop":null,"finished":false}'
)


def old_log() -> bytes:
    """Four lines of log.jsonl as the previous runner wrote them."""
    lines = [
        ("system", "", "acquiring package Web 1.0.0"),
        ("system", "", "package Web 1.0.0 acquired"),
        ("system", "Deploy web", "step 'Deploy web' started"),
        ("stdout", "Deploy web", "hi"),
    ]
    return b"".join(
        json.dumps({"seq": seq, "time": float(seq), "stream": stream, "step": name, "text": text}).encode()
        + b"\n"
        for seq, (stream, name, text) in enumerate(lines, start=1)
    )


async def test_a_task_json_of_the_previous_version_loads_and_is_kept_in_its_format(tmp_path: Path) -> None:
    """An upgraded tentacle reads an old task.json: the running step is unknown, the format stays."""
    folder = tmp_path / "state" / "tasks" / "t-old"
    folder.mkdir(parents=True)
    log = old_log()
    (folder / "log.jsonl").write_bytes(log)
    old = json.loads(OLD_TASK_JSON.replace("LOG_BYTES", str(len(log))))
    (folder / "task.json").write_text(json.dumps(old))

    agent = Agent(tmp_path / "state")
    status = await agent.status("t-old")
    reason = "tentacle restarted while step 'Deploy web' was running; its result is unknown"
    assert status["state"] == "failed"
    assert status["gates"] == [
        {"index": 1, "name": "acquisition", "state": "success", "reason": "1 package(s) acquired"},
        {"index": 2, "name": "step:1", "state": "unknown", "reason": reason},
    ]
    lines = await agent.log("t-old")
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert (lines[-1]["step"], lines[-1]["text"]) == ("Deploy web", reason)
    await agent.runner.shutdown(1)

    saved = json.loads((folder / "task.json").read_text())
    assert saved.keys() == old.keys()
    assert {key: saved[key] for key in ("format", "plan", "arrival", "packages", "stop", "finished")} == {
        key: old[key] for key in ("format", "plan", "arrival", "packages", "stop", "finished")
    }
    assert (saved["state"], saved["currentStep"], saved["logSeq"]) == ("failed", None, 6)
    assert saved["logBytes"] == (folder / "log.jsonl").stat().st_size
    again = Agent(tmp_path / "state")
    assert await again.status("t-old") == status
    await again.runner.shutdown(1)


async def test_tasks_the_previous_version_saved_as_done_read_as_how_they_ended(tmp_path: Path) -> None:
    """An old task.json saying ``done`` reads success, failed or cancelled, as its gates say."""
    gates = {
        "t-passed": [("step:1", "success")],
        "t-broke": [("step:1", "failed")],
        "t-crashed": [("step:1", "unknown")],
        "t-finished": [],
    }
    for arrival, (task_id, ended) in enumerate(gates.items()):
        folder = tmp_path / "state" / "tasks" / task_id
        folder.mkdir(parents=True)
        record = json.loads(OLD_TASK_JSON.replace("LOG_BYTES", "0"))
        record["plan"]["taskId"] = task_id
        record |= {"arrival": arrival, "state": "done", "currentStep": None, "logSeq": 1}
        record["gates"] = [
            {"index": 2 + n, "name": name, "state": state, "reason": ""}
            for n, (name, state) in enumerate(ended)
        ]
        record["plan"]["steps"][0].pop("package")
        (folder / "task.json").write_text(json.dumps(record))
    agent = Agent(tmp_path / "state")
    states = {task_id: (await agent.status(task_id))["state"] for task_id in gates}
    assert states == {
        "t-passed": "success",
        "t-broke": "failed",
        "t-crashed": "failed",
        "t-finished": "cancelled",
    }
    await agent.runner.shutdown(1)


def write_old_tasks(state: Path, tasks: int, lines: int) -> None:
    """Ended tasks whose task.json never heard of their log's lines: recovery reads every line."""
    line: dict[str, Any] = {"seq": 0, "time": 1.0, "stream": "stdout", "step": "Deploy", "text": "x" * 40}
    for number in range(tasks):
        task_id = f"t-{number:03}"
        folder = state / "tasks" / task_id
        folder.mkdir(parents=True)
        plan = make_plan(task_id, [step(1, "Deploy", "true")]).to_json()
        record = {"format": 1, "plan": plan, "arrival": number, "state": "done", "gates": [], "version": 3}
        record |= {"logSeq": 1, "logBytes": 0, "currentStep": None, "packages": {}, "stop": None}
        record["finished"] = False
        (folder / "task.json").write_text(json.dumps(record))
        with (folder / "log.jsonl").open("w") as file:
            for seq in range(1, lines + 1):
                file.write(json.dumps(line | {"seq": seq}) + "\n")


async def test_startup_recovery_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """Loading tasks whose logs must be scanned (about a second of work) runs no callback over 100 ms
    (the loop watch of tests/conftest.py fails the test otherwise)."""
    # Written off the loop: the test's own first step would otherwise hold the loop itself.
    await asyncio.to_thread(write_old_tasks, tmp_path / "state", 10, 10_000)
    agent = Agent(tmp_path / "state")
    await agent.runner.start()
    status = await agent.status("t-009", 9_999)
    assert (status["state"], [line["seq"] for line in status["log"]]) == ("cancelled", [10_000])
    await agent.runner.shutdown(1)


async def test_an_answer_showing_a_gate_result_holds_every_line_printed_before_it(tmp_path: Path) -> None:
    """Following the log as the server does, the first answer with the gate's result ends the step's lines."""
    agent = Agent(tmp_path / "state")
    await agent.start(make_plan("t-burst", [step(1, "Burst", "seq 1 3000")]))
    await agent.gate("t-burst", 2, "step:1")
    since, version = 0, 0
    seen: list[dict[str, Any]] = []
    while True:
        answer = await agent.status("t-burst", since, version, wait=1)
        seen += answer["log"]
        since, version = (seen[-1]["seq"] if seen else 0), answer["version"]
        if (gate_of(answer, 2) or {}).get("state") in FINAL and not answer["more"]:
            break
    assert texts(seen, "stdout") == [str(n) for n in range(1, 3001)]
    assert texts(seen)[-1] == "step 'Burst' finished: exit code 0"
    assert (await agent.status("t-burst", since))["log"] == []
    assert (await agent.status("t-burst", EVERYTHING_READ))["state"] == "success"
    await agent.runner.shutdown(1)
