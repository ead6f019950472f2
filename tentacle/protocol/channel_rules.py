"""Channels and release version templates: which package versions a release may take.

A project's process may declare channels (``"channels": [{"name": "Hotfix", "rules":
[...]}]``); the implicit channel ``Default`` has no rules unless the document declares
one of that name. A rule names packages (by id, case-insensitively, as NuGet does) and
limits their versions with a NuGet version range (``[2.1,2.2)``) and a pre-release tag
pattern (a regular expression searched in the version's labels: ``^$`` allows stable
versions only, ``^beta`` betas only); an empty range or pattern allows anything. Every
rule that names a package must hold for a version of it.

`pick` chooses a package's version for a release: the newest the channel's rules allow;
with no rule for the package, the newest stable (the newest pre-release if none is).

A version template (``"versionTemplate": "1.0.#{Octopus.Version.NextPatch}"``) makes the
next release version from the last release's: ``Octopus.Version.LastMajor`` (and
``LastMinor``, ``LastPatch``, ``LastBuild``), ``Octopus.Version.NextMajor`` (and
``NextMinor``, ``NextPatch``, ``NextBuild``: the last one's part plus one), and the same
under ``Octopus.Version.Channel.`` for the last release of the same channel. Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Final

import msgspec

from tentacle.protocol.documents import PACKAGE_ID, TEXT, Name
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion, newest
from tentacle.protocol.wire import Wire

if TYPE_CHECKING:
    from tentacle.protocol.nuget_ranges import VersionRange

DEFAULT_CHANNEL: Final = "Default"
MAX_CHANNELS: Final = 100
MAX_RULES: Final = 100
MAX_PATTERN: Final = 200
MAX_TEMPLATE: Final = 100

PackageIdText = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=PACKAGE_ID)]
RuleText = Annotated[str, msgspec.Meta(max_length=MAX_PATTERN, pattern=TEXT)]
Template = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEMPLATE, pattern=TEXT)]

_TOKEN = re.compile(r"#\{([^}]*)\}")
_PARTS: Final = ("Major", "Minor", "Patch", "Build")


class ChannelRule(Wire, frozen=True):
    """Versions allowed for some packages: a NuGet range and a pattern for the pre-release tag."""

    packages: Annotated[tuple[PackageIdText, ...], msgspec.Meta(min_length=1, max_length=1000)]
    version_range: RuleText = ""
    pre_release_tag: RuleText = ""

    def describe(self) -> str:
        """The rule in words, for messages."""
        parts = [
            f"versionRange {self.version_range}" if self.version_range else "",
            f"preReleaseTag {self.pre_release_tag}" if self.pre_release_tag else "",
        ]
        return ", ".join(part for part in parts if part) or "any version"

    def covers(self, package_id: str) -> bool:
        """Whether the rule names this package (ids compare case-insensitively)."""
        return package_id.lower() in (p.lower() for p in self.packages)

    def allows(self, version: NuGetVersion) -> bool:
        """Whether ``version`` is in the range and its pre-release tag matches the pattern."""
        if self.version_range and not _range(self.version_range).satisfies(version):
            return False
        return not self.pre_release_tag or _pattern(self.pre_release_tag).search(version.release) is not None


class Channel(Wire, frozen=True):
    """A named set of rules a release created in it must keep."""

    name: Name
    rules: Annotated[tuple[ChannelRule, ...], msgspec.Meta(max_length=MAX_RULES)] = ()

    def rules_for(self, package_id: str) -> list[ChannelRule]:
        """The rules that name this package."""
        return [rule for rule in self.rules if rule.covers(package_id)]

    def broken_rule(self, package_id: str, version: NuGetVersion) -> ChannelRule | None:
        """The first rule for this package that ``version`` breaks, or None."""
        return next((rule for rule in self.rules_for(package_id) if not rule.allows(version)), None)

    def pick(self, package_id: str, versions: Iterable[NuGetVersion]) -> NuGetVersion | None:
        """The version a release in this channel takes when none is given, or None."""
        rules = self.rules_for(package_id)
        if not rules:
            known = list(versions)
            return newest(known) or newest(known, include_prerelease=True)
        return max((v for v in versions if all(rule.allows(v) for rule in rules)), default=None)


Channels = Annotated[tuple[Channel, ...], msgspec.Meta(max_length=MAX_CHANNELS)]


@functools.lru_cache(maxsize=1024)
def _range(text: str) -> VersionRange:
    # Loaded with the first rule checked: a tentacle reads plans but never checks a channel's rules.
    from tentacle.protocol.nuget_ranges import VersionRange

    return VersionRange.parse(text)


@functools.lru_cache(maxsize=1024)
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def find_channel(channels: Sequence[Channel], name: str) -> Channel | None:
    """The channel of that name; ``Default`` without rules when the document declares none such."""
    found = next((channel for channel in channels if channel.name == name), None)
    if found is None and name == DEFAULT_CHANNEL:
        return Channel(name=DEFAULT_CHANNEL)
    return found


def channel_names(channels: Sequence[Channel]) -> list[str]:
    """Every channel a release may name, ``Default`` included."""
    names = [channel.name for channel in channels]
    return names if DEFAULT_CHANNEL in names else [DEFAULT_CHANNEL, *names]


def channel_problems(
    channels: Sequence[Channel], used: Iterable[str], path: str
) -> Iterator[tuple[str, str]]:
    """Duplicate names, bad ranges or patterns, and rules for packages the process does not use."""
    used_lower = {package_id.lower() for package_id in used}
    first: dict[str, int] = {}
    for index, channel in enumerate(channels):
        at = f"{path}[{index}]"
        if channel.name in first:
            yield f"{at}.name", f"duplicate channel name (see {path}[{first[channel.name]}])"
        first.setdefault(channel.name, index)
        for number, rule in enumerate(channel.rules):
            yield from _rule_problems(rule, used_lower, f"{at}.rules[{number}]")


def _rule_problems(rule: ChannelRule, used_lower: set[str], at: str) -> Iterator[tuple[str, str]]:
    for number, package_id in enumerate(rule.packages):
        if package_id.lower() not in used_lower:
            yield f"{at}.packages[{number}]", f"the process uses no package {package_id!r}"
    if rule.version_range:
        try:
            _range(rule.version_range)
        except InvalidVersion as exc:
            yield f"{at}.versionRange", exc.message
    if rule.pre_release_tag:
        try:
            _pattern(rule.pre_release_tag)
        except re.error as exc:
            yield f"{at}.preReleaseTag", f"not a regular expression: {exc}"


def _variables(last: NuGetVersion | None, prefix: str) -> dict[str, str]:
    numbers = (last.major, last.minor, last.patch, last.revision) if last else (0, 0, 0, 0)
    values = {}
    for part, number in zip(_PARTS, numbers, strict=True):
        values[f"{prefix}Last{part}"] = str(number)
        values[f"{prefix}Next{part}"] = str(number + 1)
    return values


def template_variables(last: NuGetVersion | None, channel_last: NuGetVersion | None) -> dict[str, str]:
    """What a version template may use, from the project's and the channel's last releases."""
    return {**_variables(last, "Octopus.Version."), **_variables(channel_last, "Octopus.Version.Channel.")}


def expand_template(template: str, values: dict[str, str]) -> str:
    """The template with every ``#{Name}`` replaced; InvalidVersion naming an unknown one."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name not in values:
            known = ", ".join(sorted(values))
            raise InvalidVersion(f"unknown variable #{{{name}}} (known: {known})")
        return values[name]

    return _TOKEN.sub(value, template)


def template_problem(template: str) -> str | None:
    """Why the template cannot make release versions, or None when it can."""
    try:
        expanded = expand_template(template, template_variables(None, None))
        NuGetVersion.parse(expanded)
    except InvalidVersion as exc:
        return exc.message
    return None
