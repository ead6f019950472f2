"""The command line's project and release commands against a real server: one request per
command, counted at the server, and a clear error without a request for a bad file or flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_shim.store import project_rows as projects
from tests.conftest import shim_command
from tests.process_helpers import example
from tests.projects_helpers import PROJECT, WEB, Shim, _set
from tests.projects_helpers import released as released
from tests.projects_helpers import shim as shim

# --- the command line -----------------------------------------------------------------------


async def cli(shim: Shim, *argv: str) -> tuple[int, list[str], str]:
    """Run ``server-shim ARGV`` against the live server; (exit code, requests it made, stdout)."""
    before = len(shim.server.requests)
    code, out = await shim_command(shim.live, *argv)
    return code, shim.server.requests[before:], out


async def test_project_apply_makes_one_put(
    shim: Shim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`project apply FILE` sends the document in exactly one PUT and reports the answer."""
    file = tmp_path / "process.json"
    file.write_text(json.dumps(example()))
    code, requests, out = await cli(shim, "project", "apply", str(file))
    assert (code, requests) == (0, [f"PUT /api/Default/projects/{PROJECT}/v1"])
    assert "applied project 'OctoPetShop': 3 steps; runbooks: Restart" in out
    assert await shim.counts() == (1, 0)


async def test_project_apply_takes_the_name_from_the_flag(shim: Shim, tmp_path: Path) -> None:
    """A document without a name is applied under --name."""
    doc = example()
    doc.pop("name")
    file = tmp_path / "process.json"
    file.write_text(json.dumps(doc))
    code, requests, _ = await cli(shim, "project", "apply", str(file), "--name", "Pet Shop")
    assert (code, requests) == (0, ["PUT /api/Default/projects/Pet Shop/v1"])
    assert (await shim.send("GET", "/api/Default/projects/Pet%20Shop/v1"))[0] == 200


async def test_project_apply_reports_the_server_problems(
    shim: Shim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid document exits 1 with the server's message naming the field."""
    file = tmp_path / "process.json"
    file.write_text(json.dumps(_set(("steps", 1, "roles"), [])))
    code, requests, _ = await cli(shim, "project", "apply", str(file))
    assert (code, len(requests)) == (1, 1)
    assert "steps[1].roles: expected a list of length >= 1" in capsys.readouterr().err


async def test_project_apply_refuses_a_bad_file_without_a_request(
    shim: Shim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not a JSON object, or has no name and no --name, sends nothing."""
    cases = {"broken.json": "{", "list.json": "[]", "nameless.json": "{}", "missing.json": None}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        code, requests, _ = await cli(shim, "project", "apply", str(tmp_path / name))
        assert code in (1, 2)
        assert requests == []
        assert name in capsys.readouterr().err


async def test_release_create_makes_one_post_and_prints_the_version(
    released: Shim, capsys: pytest.CaptureFixture[str]
) -> None:
    """`release create` is exactly one POST and prints the normalized version alone."""
    argv = ["release", "create", "--project", PROJECT, "--version", "1.2", "--package", f"{WEB}=1.9.0"]
    code, requests, out = await cli(released, *argv)
    assert (code, requests) == (0, ["POST /api/Default/releases/create/v1"])
    assert out == "1.2.0\n"
    release = await released.server.db.run(projects.get_release, "Default", PROJECT, "1.2.0")
    assert release.packages[WEB].version == "1.9.0"


async def test_release_create_failure_exits_1_after_one_request(
    released: Shim, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused release exits 1 with the server's message, after exactly one request."""
    argv = ["release", "create", "--project", PROJECT, "--version", "1.0.0", "--package", f"{WEB}=7.0.0"]
    code, requests, out = await cli(released, *argv)
    assert (code, len(requests)) == (1, 1)
    assert out == ""
    assert "'OctoPetShop.Web' version '7.0.0' is not in the feed" in capsys.readouterr().err


@pytest.mark.parametrize("package", ["NoEquals", "=1.0.0", f"{WEB}="])
async def test_release_create_refuses_a_malformed_package_flag(
    released: Shim, package: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--package must be ID=VERSION: anything else exits 2 without a request."""
    code, requests, _ = await cli(
        released, "release", "create", "--project", PROJECT, "--version", "1", "--package", package
    )
    assert (code, requests) == (2, [])
    assert "--package must be ID=VERSION" in capsys.readouterr().err
