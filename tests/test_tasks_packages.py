"""The task runner's packages: acquisition extracts what the steps use, and a missing package or
a bad archive fails its gate or step with the reason, without running its script."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tentacle.errors import TentacleError
from tentacle.protocol.plan import Plan, PlannedPackage
from tentacle.runner.runner import NOT_CONFIGURED
from tests.tasks_helpers import Agent, make_plan, package, step, texts, write_zip
from tests.tasks_helpers import agent as agent

pytestmark = pytest.mark.timeout(30)


# --- packages -----------------------------------------------------------------------------


async def test_acquisition_then_steps_use_the_extracted_package(tmp_path: Path) -> None:
    """Acquisition fetches every package; a step reads $PACKAGE_DIR; a package-only step extracts."""
    acquired: list[str] = []

    async def acquire(plan: Plan, wanted: PlannedPackage) -> Path:
        """Write a real zip for the package, as the package layer would put it in the cache."""
        acquired.append(wanted.id)
        await asyncio.sleep(0.05)
        return write_zip(tmp_path / wanted.file_name, {"readme.txt": f"hello from {wanted.id}\n"})

    agent = Agent(tmp_path / "state", acquire)
    steps = [
        step(1, "Deploy web", 'cat "$PACKAGE_DIR/readme.txt"', package=package("Web")),
        step(2, "Unpack db", package=package("Db")),
    ]
    await agent.start(make_plan("t-pkg", steps))
    gate = await agent.run_gate("t-pkg", 1, "acquisition")
    assert gate["state"] == "success", gate
    assert sorted(acquired) == ["Db", "Web"]
    assert (await agent.run_gate("t-pkg", 2, "step:1"))["state"] == "success"
    assert "hello from Web" in texts(await agent.log("t-pkg"), "stdout")
    assert await agent.run_gate("t-pkg", 3, "step:2") == {
        "index": 3,
        "name": "step:2",
        "state": "success",
        "reason": "package extracted",
    }
    extracted = agent.state_dir / "work" / "t-pkg" / "2-package" / "readme.txt"
    assert extracted.read_text() == "hello from Db\n"
    assert (await agent.status("t-pkg"))["state"] == "success"
    await agent.runner.shutdown(1)


async def test_acquisition_failures_fail_the_gate_naming_the_package(tmp_path: Path) -> None:
    """Without an acquire function, or when one package fails, the acquisition gate fails."""

    async def acquire(plan: Plan, wanted: PlannedPackage) -> Path:
        """Fail for one package, as an unreachable mirror would."""
        if wanted.id == "Db":
            raise TentacleError("every mirror failed")
        return write_zip(tmp_path / wanted.file_name, {"readme.txt": "x"})

    steps = [step(1, "Web", "true", package=package("Web")), step(2, "Db", "true", package=package("Db"))]
    unconfigured = Agent(tmp_path / "one")
    await unconfigured.start(make_plan("t-none", steps))
    gate = await unconfigured.run_gate("t-none", 1, "acquisition")
    assert (gate["state"], gate["reason"]) == ("failed", NOT_CONFIGURED)
    await unconfigured.runner.shutdown(1)

    failing = Agent(tmp_path / "two", acquire)
    await failing.start(make_plan("t-fails", steps))
    gate = await failing.run_gate("t-fails", 1, "acquisition")
    assert (gate["state"], gate["reason"]) == ("failed", "package Db 1.0.0: every mirror failed")
    assert (await failing.status("t-fails"))["state"] == "failed"
    await failing.runner.shutdown(1)


async def test_a_bad_archive_fails_the_step_without_running_its_script(tmp_path: Path) -> None:
    """A package file that is not a valid archive fails its step with the extraction error."""

    async def acquire(plan: Plan, wanted: PlannedPackage) -> Path:
        """Return a file named .zip that is not a zip."""
        bad = tmp_path / wanted.file_name
        bad.write_bytes(b"this is not a zip archive")
        return bad

    agent = Agent(tmp_path / "state", acquire)
    marker = tmp_path / "ran"
    await agent.start(make_plan("t-bad", [step(1, "Deploy", f"touch {marker}", package=package("Web"))]))
    assert (await agent.run_gate("t-bad", 1, "acquisition"))["state"] == "success"
    gate = await agent.run_gate("t-bad", 2, "step:1")
    assert gate["state"] == "failed"
    assert gate["reason"].startswith("cannot extract package Web 1.0.0: archive breaks rule 'format'")
    assert not marker.exists()
    await agent.runner.shutdown(1)
