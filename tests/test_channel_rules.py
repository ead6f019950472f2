"""The pure rules of channels, version templates, tag filters and deployment schedules."""

from __future__ import annotations

import pytest

from server_shim.dispatch import timetable
from server_shim.store.task_rows import TaskRecord
from server_shim.store.tenants import matches
from tentacle.protocol.channel_rules import (
    Channel,
    ChannelRule,
    expand_template,
    find_channel,
    template_problem,
    template_variables,
)
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion
from tentacle.protocol.process import ProcessError, parse_process

V = NuGetVersion.parse
FEED = [V(t) for t in ("2.0.0", "2.1.0", "2.1.5-beta", "2.1.7", "2.2.0", "2.3.0-rc.1", "1.9.0")]
HOTFIX = Channel(
    name="Hotfix",
    rules=(ChannelRule(packages=("Web",), version_range="[2.1,2.2)", pre_release_tag="^$"),),
)


def test_a_rule_picks_the_newest_version_in_its_range_with_a_matching_tag() -> None:
    """[2.1,2.2) with ^$ takes 2.1.7: not 2.2.0 (outside), not 2.1.5-beta (a tag)."""
    assert HOTFIX.pick("web", FEED) == V("2.1.7")  # ids compare case-insensitively


def test_a_tag_pattern_selects_pre_releases() -> None:
    """A pattern for the tag (^rc) picks the newest version whose tag matches it."""
    beta = Channel(name="Beta", rules=(ChannelRule(packages=("Web",), pre_release_tag="^rc"),))
    assert beta.pick("Web", FEED) == V("2.3.0-rc.1")


def test_without_a_rule_the_newest_stable_is_taken() -> None:
    """A package no rule names gets the newest stable version, as before channels."""
    assert HOTFIX.pick("Db", FEED) == V("2.2.0")
    assert HOTFIX.pick("Db", [V("1.0.0-a")]) == V("1.0.0-a")  # only pre-releases: the newest of them


def test_no_allowed_version_picks_nothing() -> None:
    """When nothing keeps the rule, pick gives None (the release names the rule)."""
    assert HOTFIX.pick("Web", [V("3.0.0")]) is None


def test_broken_rule_names_the_rule() -> None:
    """A version outside the range or with a refused tag is named as breaking that rule."""
    assert HOTFIX.broken_rule("Web", V("2.2.0")) is HOTFIX.rules[0]
    assert HOTFIX.broken_rule("Web", V("2.1.5-beta")) is HOTFIX.rules[0]
    assert HOTFIX.broken_rule("Web", V("2.1.1")) is None
    assert "versionRange [2.1,2.2)" in HOTFIX.rules[0].describe()


def test_default_is_implicit_unless_declared() -> None:
    """Default exists without rules; a declared Default carries its own rules; others must exist."""
    assert find_channel((), "Default") == Channel(name="Default")
    declared = Channel(name="Default", rules=HOTFIX.rules)
    assert find_channel((declared,), "Default") is declared
    assert find_channel((HOTFIX,), "Nope") is None


def test_templates_take_the_last_release_parts() -> None:
    """NextPatch is the last release's patch plus one; channel variables use the channel's last."""
    values = template_variables(V("1.4.9"), V("1.2.0"))
    assert expand_template("1.4.#{Octopus.Version.NextPatch}", values) == "1.4.10"
    assert expand_template("#{Octopus.Version.NextMajor}.0.0", values) == "2.0.0"
    assert (
        expand_template("1.#{Octopus.Version.LastMinor}.#{Octopus.Version.Channel.NextMinor}", values)
        == "1.4.3"
    )
    assert expand_template("1.0.#{Octopus.Version.NextPatch}", template_variables(None, None)) == "1.0.1"


def test_an_unknown_template_variable_is_named() -> None:
    """A misspelt variable is an error naming it; a template that makes no version is refused."""
    with pytest.raises(InvalidVersion, match=r"#\{Octopus.Version.NextPath\}"):
        expand_template("1.0.#{Octopus.Version.NextPath}", template_variables(None, None))
    assert template_problem("x.#{Octopus.Version.NextPatch}") is not None
    assert template_problem("1.0.#{Octopus.Version.NextPatch}") is None


def test_the_process_document_checks_channels_and_template() -> None:
    """Bad ranges, patterns, unknown packages, duplicate names and templates are refused by path."""
    doc = {
        "name": "P",
        "steps": [{"name": "S", "roles": ["web"], "package": {"id": "Web"}}],
        "channels": [
            {"name": "H", "rules": [{"packages": ["Nope"], "versionRange": "[2,", "preReleaseTag": "("}]},
            {"name": "H"},
        ],
        "versionTemplate": "1.#{Foo}",
    }
    with pytest.raises(ProcessError) as caught:
        parse_process(doc)
    paths = [path for path, _ in caught.value.problems]
    assert paths == [
        "channels[0].rules[0].packages[0]",
        "channels[0].rules[0].versionRange",
        "channels[0].rules[0].preReleaseTag",
        "channels[1].name",
        "versionTemplate",
    ]


@pytest.mark.parametrize(
    ("carried", "wanted", "passes"),
    [
        ({"Region/EU", "Tier/Gold"}, ["Region/EU", "Region/US"], True),  # within a set: OR
        ({"Region/EU"}, ["Region/EU", "Tier/Gold"], False),  # across sets: AND
        ({"Region/US", "Tier/Gold"}, ["Region/EU", "Region/US", "Tier/Gold"], True),
        ({"Region/EU"}, [], False),  # an empty filter selects nothing
    ],
)
def test_tag_filters_or_within_a_set_and_across_sets(
    carried: set[str], wanted: list[str], passes: bool
) -> None:
    """Tags of one tag set OR, tag sets AND, as Octopus does."""
    assert matches(carried, wanted) is passes


def _record(run_at: float | None, no_run_after: float | None) -> TaskRecord:
    return TaskRecord(
        task_id="T-1",
        space="Default",
        kind="deployment",
        project="P",
        release_version="1.0.0",
        runbook=None,
        environment="Dev",
        state="queued",
        error=None,
        created_at=0.0,
        finished_at=None,
        plans={},
        coordinator={},
        run_at=run_at,
        no_run_after=no_run_after,
    )


def test_a_scheduled_task_waits_then_expires() -> None:
    """Not due before runAt; expired past noRunAfter, with that reason; woken at the next of the two."""
    record = _record(100.0, 200.0)
    assert not timetable.due(record, 99.0) and timetable.due(record, 100.0)
    assert not timetable.expired(record, 200.0) and timetable.expired(record, 200.5)
    assert timetable.wake_at([record], 50.0) == 100.0
    assert timetable.wake_at([record], 150.0) == 200.0
    assert timetable.wake_at([_record(None, None)], 0.0) is None
    assert "noRunAfter 1970-01-01T00:03:20Z" in timetable.expiry_reason(record)
