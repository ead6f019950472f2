"""Releases in channels, and release versions made by the project: through the real API."""

from __future__ import annotations

from typing import Any

import pytest

from server_shim.store import project_rows as projects
from tests.projects_helpers import Shim, error_of
from tests.projects_helpers import shim as shim

WEB, DB = "Shop.Web", "Shop.Db"
RANGE = "[2.1,2.2)"


def shop(**extra: Any) -> dict[str, Any]:
    """A project with two packages and a Hotfix channel that holds Shop.Web to stable 2.1.x."""
    return {
        "name": "Shop",
        "steps": [
            {"name": "Web", "roles": ["web"], "package": {"id": WEB}},
            {"name": "Db", "roles": ["db"], "package": {"id": DB}},
        ],
        "channels": [
            {"name": "Hotfix", "rules": [{"packages": [WEB], "versionRange": RANGE, "preReleaseTag": "^$"}]}
        ],
        **extra,
    }


@pytest.fixture
async def feed(shim: Shim) -> Shim:
    """Versions of both packages in the built-in feed."""
    for version in ("2.0.0", "2.1.0", "2.1.3", "2.1.4-beta", "2.2.0", "3.0.0-rc.1"):
        await shim.add_package(WEB, version)
    await shim.add_package(DB, "1.0.0")
    return shim


async def test_a_channel_picks_the_newest_version_its_rule_allows_and_is_remembered(feed: Shim) -> None:
    """Hotfix takes Shop.Web 2.1.3 (not 2.2.0 or 2.1.4-beta), Default 2.2.0; a release keeps its channel."""
    assert (await feed.apply(shop(), "Shop"))[0] == 201
    status, answer = await feed.release(
        {"projectName": "Shop", "releaseVersion": "1.0.0", "channelName": "Hotfix"}
    )
    assert status == 201, answer
    assert answer["packageVersions"] == {WEB: "2.1.3", DB: "1.0.0"}
    assert answer["channelName"] == "Hotfix"
    status, answer = await feed.release({"projectName": "Shop", "releaseVersion": "1.1.0"})
    assert (status, answer["packageVersions"][WEB], answer["channelName"]) == (201, "2.2.0", "Default")
    stored = await feed.server.db.run(projects.get_release, "Default", "Shop", "1.0.0")
    assert stored.channel == "Hotfix"


async def test_a_given_version_that_breaks_the_rule_is_refused_unless_rules_are_ignored(feed: Shim) -> None:
    """2.2.0 in Hotfix is a 400 naming the rule, nothing created; ignoreChannelRules takes it."""
    await feed.apply(shop(), "Shop")
    body = {
        "projectName": "Shop",
        "releaseVersion": "1.0.0",
        "channelName": "Hotfix",
        "packageVersions": {WEB: "2.2.0"},
    }
    status, answer = await feed.release(body)
    assert status == 400
    message = error_of(answer)
    assert message.startswith(
        'packageVersions["Shop.Web"]: version 2.2.0 of Shop.Web breaks the rule of channel'
    )
    assert f"versionRange {RANGE}" in message and "preReleaseTag ^$" in message
    assert answer["error"]["details"]["rule"]["versionRange"] == RANGE
    assert await feed.counts() == (1, 0)
    status, answer = await feed.release({**body, "ignoreChannelRules": True})
    assert (status, answer["packageVersions"][WEB]) == (201, "2.2.0")


async def test_an_unknown_channel_is_a_404_naming_the_channels(feed: Shim) -> None:
    """A channel the project lacks is named, with the ones it has; nothing is created."""
    await feed.apply(shop(), "Shop")
    status, answer = await feed.release(
        {"projectName": "Shop", "releaseVersion": "1.0.0", "channelName": "Nope"}
    )
    assert status == 404
    assert error_of(answer) == "channelName: project 'Shop' has no channel 'Nope' (it has: Default, Hotfix)"
    assert await feed.counts() == (1, 0)


async def test_no_version_in_the_feed_keeps_the_rule(shim: Shim) -> None:
    """When the feed has nothing the rule allows, the 404 names the package and the rule."""
    await shim.apply(shop(), "Shop")
    await shim.add_package(WEB, "2.5.0")
    await shim.add_package(DB, "1.0.0")
    status, answer = await shim.release(
        {"projectName": "Shop", "releaseVersion": "1.0.0", "channelName": "Hotfix"}
    )
    assert status == 404
    assert "no version of package 'Shop.Web' in the feed keeps the rule of channel 'Hotfix'" in error_of(
        answer
    )


async def test_the_version_template_makes_the_next_version(feed: Shim) -> None:
    """Without releaseVersion, 1.0.#{NextPatch} gives 1.0.1, then 1.0.2; a given version still wins."""
    await feed.apply(shop(versionTemplate="1.0.#{Octopus.Version.NextPatch}"), "Shop")
    made = []
    for _ in range(2):
        status, answer = await feed.release({"projectName": "Shop"})
        assert status == 201, answer
        made.append(answer["releaseVersion"])
    assert made == ["1.0.1", "1.0.2"]
    status, answer = await feed.release({"projectName": "Shop", "releaseVersion": "1.0.7"})
    assert status == 201
    status, answer = await feed.release({"projectName": "Shop"})
    assert answer["releaseVersion"] == "1.0.8"


async def test_channel_variables_follow_the_channel_s_own_releases(feed: Shim) -> None:
    """Octopus.Version.Channel.* counts the releases of the release's channel only."""
    await feed.apply(shop(versionTemplate="#{Octopus.Version.Channel.NextMajor}.0.0"), "Shop")
    versions = []
    for _ in range(2):
        status, answer = await feed.release({"projectName": "Shop"})
        assert status == 201, answer
        versions.append(answer["releaseVersion"])
    assert versions == ["1.0.0", "2.0.0"]
    # Hotfix has no release yet: its counter starts at 0, and 1.0.0 is Default's already.
    status, answer = await feed.release({"projectName": "Shop", "channelName": "Hotfix"})
    assert status == 409
    assert "release '1.0.0' of project 'Shop' already exists (made from the versionTemplate)" in error_of(
        answer
    )


async def test_without_a_template_the_newest_package_version_is_the_release_version(feed: Shim) -> None:
    """No template: the release takes the highest of its package versions; again, it is a 409."""
    await feed.apply(shop(), "Shop")
    status, answer = await feed.release({"projectName": "Shop"})
    assert (status, answer["releaseVersion"]) == (201, "2.2.0")
    status, answer = await feed.release({"projectName": "Shop"})
    assert status == 409 and "give releaseVersion" in error_of(answer)


async def test_no_version_no_template_no_package_is_a_400(shim: Shim) -> None:
    """A project without packages or template needs releaseVersion."""
    await shim.apply(
        {
            "name": "Bare",
            "steps": [{"name": "S", "roles": ["web"], "script": {"syntax": "bash", "body": "true"}}],
        },
        "Bare",
    )
    status, answer = await shim.release({"projectName": "Bare"})
    assert status == 400
    assert error_of(answer).startswith("releaseVersion: required (project 'Bare' has no versionTemplate")


async def test_a_bad_channel_definition_is_refused_when_the_project_is_applied(shim: Shim) -> None:
    """Channel rules are checked at apply: the 400 names the path."""
    doc = shop()
    doc["channels"][0]["rules"][0]["versionRange"] = "[2.1,"
    status, answer = await shim.apply(doc, "Shop")
    assert status == 400
    assert error_of(answer).startswith("channels[0].rules[0].versionRange: invalid NuGet version range")
