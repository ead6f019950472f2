"""Projects and releases against a real server on 127.0.0.1 over TLS: the routes, and every
bad field a 4xx naming it with nothing created (hostile bodies: tests/test_projects_hostile.py;
the command line: tests/test_projects_cli.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from server_shim.store import project_rows as projects
from tests.process_helpers import example
from tests.projects_helpers import DB, PROJECT, TOOLS, WEB, MiB, Shim, _set, error_of
from tests.projects_helpers import released as released
from tests.projects_helpers import shim as shim

# --- projects -------------------------------------------------------------------------------


async def test_apply_creates_then_get_returns_the_normalized_document(shim: Shim) -> None:
    """A new project answers 201 with its shape; GET gives the document with defaults spelled out."""
    status, answer = await shim.apply(example())
    assert (status, answer) == (201, {"name": PROJECT, "steps": 3, "runbooks": ["Restart"]})
    status, doc = await shim.send("GET", f"/api/Default/projects/{PROJECT}/v1")
    assert status == 200
    assert doc["steps"][1]["phase"] == "deployment"
    assert doc["steps"][1]["timeoutSeconds"] == 3600
    assert doc["variables"][0] == {  # write-only: a sensitive variable is shown without its value
        "name": "DbPassword",
        "environments": ["Production"],
        "roles": [],
        "machines": [],
        "sensitive": True,
    }


async def test_apply_again_replaces_and_answers_200(shim: Shim) -> None:
    """Applying an existing project replaces its process and answers 200."""
    await shim.apply(example())
    changed = example()
    del changed["steps"][0]
    changed.pop("runbooks")
    status, answer = await shim.apply(changed)
    assert (status, answer) == (200, {"name": PROJECT, "steps": 2, "runbooks": []})
    _, doc = await shim.send("GET", f"/api/Default/projects/{PROJECT}/v1")
    assert [step["name"] for step in doc["steps"]] == ["Deploy web", "Migrate"]
    assert await shim.counts() == (1, 0)


async def test_name_comes_from_the_url_when_the_document_has_none(shim: Shim) -> None:
    """A document without a name is stored under the URL's name (spaces and all)."""
    doc = example()
    doc.pop("name")
    status, answer = await shim.apply(doc, "Pet%20Shop")
    assert status == 201
    assert answer["name"] == "Pet Shop"
    assert (await shim.send("GET", "/api/Default/projects/Pet%20Shop/v1"))[1]["name"] == "Pet Shop"


async def test_unknown_project_and_space_are_404(shim: Shim) -> None:
    """GET of a project or space that does not exist is a 404 naming it."""
    status, answer = await shim.send("GET", "/api/Default/projects/Nope/v1")
    assert status == 404
    assert error_of(answer) == "project 'Nope' does not exist in space 'Default'"
    status, answer = await shim.send("PUT", f"/api/Elsewhere/projects/{PROJECT}/v1", example())
    assert status == 404
    assert "space 'Elsewhere' does not exist" in error_of(answer)


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        (_set(("steps", 1, "roles"), []), "steps[1].roles", "expected a list of length >= 1"),
        (_set(("steps", 0, "scirpt"), {}), "steps[0].scirpt", "unknown field"),
        (_set(("colour",), "blue"), "colour", "unknown field"),
        (_set(("name",), "Other"), "name", "must match the project name 'OctoPetShop'"),
        (
            _set(("steps", 0, "phase"), "later"),
            "steps[0].phase",
            "expected deployment or preAcquisition, got 'later'",
        ),
        (
            _set(("steps", 2, "timeoutSeconds"), 0),
            "steps[2].timeoutSeconds",
            "expected an integer >= 1",
        ),
        (_set(("steps", 1, "package", "id"), "../x"), "steps[1].package.id", "must be a package id"),
        (
            _set(("steps", 0, "package"), {"id": "A"}),
            "steps[0].package",
            "not allowed in a preAcquisition step",
        ),
        (
            _set(("variables", 0, "sensitive"), "yes"),
            "variables[0].sensitive",
            "expected true or false, got a string",
        ),
        (
            _set(("runbooks", "Restart", "steps"), []),
            "runbooks.Restart.steps",
            "expected a list of length >= 1",
        ),
        (_set(("steps",), {"name": "x"}), "steps", "expected a list, got an object"),
        (_set(("steps", 2, "name"), "Open VPN"), "steps[2].name", "duplicate step name (see steps[0])"),
        (
            _set(("steps", 1, "script", "body"), "x" * (MiB + 1)),
            "steps[1].script.body",
            "expected a string of length <= 1048576",
        ),
    ],
)
async def test_each_validation_error_names_its_field_and_creates_nothing(
    shim: Shim, doc: dict[str, Any], path: str, message: str
) -> None:
    """An invalid document is a 400 whose message and details name the field; nothing is stored."""
    status, answer = await shim.apply(doc)
    assert status == 400
    assert f"{path}: {message}" in error_of(answer)
    problems = answer["error"]["details"]["problems"]
    assert any(p["path"] == path and p["message"].startswith(message) for p in problems), problems
    assert await shim.counts() == (0, 0)


async def test_every_broken_rule_is_listed_in_one_answer(shim: Shim) -> None:
    """Several broken rules come back together, each with its path."""
    doc = _set(("steps", 0, "package"), {"id": "A"})
    doc["steps"][2]["name"] = "Open VPN"
    status, answer = await shim.apply(doc)
    assert status == 400
    assert error_of(answer) == (
        "steps[0].package: not allowed in a preAcquisition step; "
        "steps[2].name: duplicate step name (see steps[0])"
    )
    assert len(answer["error"]["details"]["problems"]) == 2


async def test_a_refused_update_keeps_the_old_process(shim: Shim) -> None:
    """A bad document for an existing project leaves the stored process as it was."""
    await shim.apply(example())
    assert (await shim.apply(_set(("steps", 1, "roles"), [])))[0] == 400
    _, doc = await shim.send("GET", f"/api/Default/projects/{PROJECT}/v1")
    assert doc["steps"][1]["roles"] == ["web"]


# --- releases -------------------------------------------------------------------------------


async def test_release_pins_the_newest_version_of_every_package(released: Shim) -> None:
    """Without packageVersions each package is the newest in the feed by NuGet order (1.10 > 1.9)."""
    status, answer = await released.release({"projectName": PROJECT, "releaseVersion": "1.0"})
    assert status == 201
    assert answer == {
        "projectName": PROJECT,
        "releaseVersion": "1.0.0",
        "packageVersions": {WEB: "1.10.0", DB: "2.0.0", TOOLS: "0.1.0"},
        "channelName": "Default",
    }


async def test_release_takes_a_given_version_matching_ids_case_insensitively(released: Shim) -> None:
    """A given version wins over the newest; the id matches in any case and the version normalizes."""
    body = {"projectName": PROJECT, "releaseVersion": "2.0.0-rc.1", "packageVersions": {WEB.lower(): "1.9"}}
    status, answer = await released.release(body)
    assert status == 201
    assert answer["releaseVersion"] == "2.0.0-rc.1"
    assert answer["packageVersions"] == {WEB: "1.9.0", DB: "2.0.0", TOOLS: "0.1.0"}


async def test_release_snapshots_the_process_and_exact_files(released: Shim) -> None:
    """A release keeps its process and package files even after the project changes."""
    await released.release({"projectName": PROJECT, "releaseVersion": "1.0.0"})
    await released.apply(_set(("steps", 1, "script", "body"), "echo changed"))
    db = released.server.db
    release = await db.run(projects.get_release, "Default", PROJECT, "1.0")
    assert release.process.steps[1].script is not None
    assert release.process.steps[1].script.body == 'cat "$PACKAGE_DIR/readme.txt"'
    assert release.process == (await db.run(projects.get_release, "Default", PROJECT, "1.0.0")).process
    web_ref = release.packages[WEB]
    assert (web_ref.id, web_ref.version, web_ref.size) == (WEB, "1.10.0", 1234)
    assert web_ref.sha512 == hashlib.sha512(f"{WEB}@1.10.0".encode()).hexdigest()


async def test_latest_release_is_the_highest_version(released: Shim) -> None:
    """latest_release follows NuGet ordering, not creation order; a project without releases has none."""
    db = released.server.db
    assert await db.run(projects.latest_release, "Default", PROJECT) is None
    for version in ("1.10.0", "1.9.0", "1.10.0-beta"):
        assert (await released.release({"projectName": PROJECT, "releaseVersion": version}))[0] == 201
    latest = await db.run(projects.latest_release, "Default", PROJECT)
    assert latest is not None
    assert latest.version == "1.10.0"


async def test_get_release_of_an_unknown_version_is_not_found(released: Shim) -> None:
    """get_release names the missing release, also for a text that is no version at all."""
    for version in ("9.9.9", "not a version"):
        with pytest.raises(projects.ReleaseNotFound, match="does not exist"):
            await released.server.db.run(projects.get_release, "Default", PROJECT, version)


async def test_a_version_the_feed_lacks_is_404_naming_package_and_version(released: Shim) -> None:
    """A given version that is not in the feed is a 4xx naming the package and the version."""
    body = {"projectName": PROJECT, "releaseVersion": "1.0.0", "packageVersions": {WEB: "3.0.0"}}
    status, answer = await released.release(body)
    assert status == 404
    message = error_of(answer)
    assert "'OctoPetShop.Web' version '3.0.0' is not in the feed" in message
    assert answer["error"]["details"]["packages"] == [{"id": WEB, "version": "3.0.0"}]
    assert await released.counts() == (1, 0)


async def test_a_package_with_no_version_in_the_feed_is_404_naming_it(shim: Shim) -> None:
    """A package the process uses but the feed has never seen is a 404 naming it; runbooks count."""
    await shim.apply(example())
    await shim.add_package(WEB, "1.0.0")
    await shim.add_package(DB, "1.0.0")
    status, answer = await shim.release({"projectName": PROJECT, "releaseVersion": "1.0.0"})
    assert status == 404
    assert error_of(answer) == "package 'OctoPetShop.Tools' has no version in the feed (push one first)"
    assert await shim.counts() == (1, 0)


async def test_a_package_the_process_does_not_use_is_400_naming_it(released: Shim) -> None:
    """packageVersions may only name packages the process uses."""
    body = {"projectName": PROJECT, "releaseVersion": "1.0.0", "packageVersions": {"Other.Pkg": "1.0.0"}}
    status, answer = await released.release(body)
    assert status == 400
    assert "the process uses no package 'Other.Pkg'" in error_of(answer)
    assert answer["error"]["details"]["path"] == 'packageVersions["Other.Pkg"]'
    assert await released.counts() == (1, 0)


@pytest.mark.parametrize("again", ["1.0.0", "1.0", "1.0.0.0", "1.0.0+build.7"])
async def test_an_existing_release_version_is_409(released: Shim, again: str) -> None:
    """A version equal (by NuGet rules) to an existing release is a 409; the first release stays."""
    assert (await released.release({"projectName": PROJECT, "releaseVersion": "1.0.0"}))[0] == 201
    status, answer = await released.release({"projectName": PROJECT, "releaseVersion": again})
    assert status == 409
    assert "release '1.0.0' of project 'OctoPetShop' already exists" in error_of(answer)
    assert await released.counts() == (1, 1)


async def test_prerelease_labels_differing_in_case_are_the_same_release(released: Shim) -> None:
    """NuGet compares labels case-insensitively, so 1.0.0-Beta and 1.0.0-beta are one release."""
    assert (await released.release({"projectName": PROJECT, "releaseVersion": "1.0.0-Beta"}))[0] == 201
    assert (await released.release({"projectName": PROJECT, "releaseVersion": "1.0.0-beta"}))[0] == 409


async def test_release_of_an_unknown_project_is_404(shim: Shim) -> None:
    """An unknown projectName is a 404 naming the project and the space."""
    status, answer = await shim.release({"projectName": "Nope", "releaseVersion": "1.0.0"})
    assert status == 404
    assert error_of(answer) == "project 'Nope' does not exist in space 'Default'"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"releaseVersion": "1.0.0"}, "projectName: required"),
        ({"projectName": PROJECT, "channelName": ""}, "channelName: expected a string of length >= 1"),
        ({"projectName": 5, "releaseVersion": "1.0.0"}, "projectName: expected a string, got an integer"),
        ({"projectName": None, "releaseVersion": "1.0.0"}, "projectName: expected a string, got null"),
        ({"projectName": [PROJECT], "releaseVersion": "1.0.0"}, "projectName: expected a string, got a list"),
        ({"projectName": "", "releaseVersion": "1.0.0"}, "projectName: expected a string of length >= 1"),
        ({"projectName": PROJECT, "releaseVersion": 1}, "releaseVersion: expected a string, got an integer"),
        ({"projectName": PROJECT, "releaseVersion": "one"}, "releaseVersion: must be a NuGet version"),
        (
            {"projectName": PROJECT, "releaseVersion": "1.0.0", "packageVersions": []},
            "packageVersions: expected an object, got a list",
        ),
        (
            {"projectName": PROJECT, "releaseVersion": "1.0.0", "packageVersions": {WEB: 1}},
            "packageVersions[...]: expected a string, got an integer",
        ),
        (
            {"projectName": PROJECT, "releaseVersion": "1.0.0", "packageVersions": {WEB: "x.y"}},
            'packageVersions["OctoPetShop.Web"]: must be a NuGet version',
        ),
        (
            {"projectName": PROJECT, "releaseVersion": "1.0.0", "packageVersions": {WEB: "1\x00"}},
            'packageVersions["OctoPetShop.Web"]: must not contain NUL',
        ),
        (
            {"projectName": PROJECT, "releaseVersion": "1.0.0", "packageVersions": {"a\x00": "1.0.0"}},
            "packageVersions: a key must not contain NUL",
        ),
        ({"projectName": PROJECT, "releaseVersion": "1.0.0", "channel": "x"}, "channel: unknown field"),
        (
            {"projectName": "x" * MiB, "releaseVersion": "1.0.0"},
            "projectName: expected a string of length <= 200",
        ),
        (
            {"projectName": PROJECT, "releaseVersion": "1." * 51},
            "releaseVersion: expected a string of length <= 100",
        ),
        ({"projectName": "\ud800", "releaseVersion": "1.0.0"}, "\\ud800 at byte 17 is half a surrogate pair"),
        ({"projectName": "a\x00b", "releaseVersion": "1.0.0"}, "projectName: must not contain NUL"),
    ],
)
async def test_each_bad_release_field_is_400_naming_it(
    released: Shim, body: dict[str, Any], message: str
) -> None:
    """Wrong, missing, unknown or oversized release fields are a 400 naming the field."""
    status, answer = await released.release(body)
    assert status == 400
    assert message in error_of(answer)
    assert await released.counts() == (1, 0)
