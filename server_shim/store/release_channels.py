"""What a new release takes: its channel's package versions, and its version when none is given.

A release is created in a channel (``Default`` unless the request names one; see
tentacle.protocol.channel_rules for the rules). Every package the process uses gets the
version the request gives, which must keep the channel's rules unless the request says
``ignoreChannelRules``, else the newest in the built-in feed that keeps them (with
``ignoreChannelRules``, the newest there is). A release without a version takes the next
one from the project's version template, else the highest version among its packages.

Errors, each with the HTTP status the API answers::

    ChannelNotFound      404   the process has no channel of that name
    ChannelRuleBroken    400   a given package version breaks a rule of the channel
    PackageMissing       404   the feed lacks a given version, or any version the channel allows
    ReleaseVersionNeeded 400   no version given, no template, and no package to take one from
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from server_shim.store import feed_store as feed
from tentacle.errors import InvalidInput, NotFound
from tentacle.protocol.channel_rules import (
    Channel,
    channel_names,
    expand_template,
    find_channel,
    template_variables,
)
from tentacle.protocol.documents import key_path
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion
from tentacle.protocol.plan import PackageRef
from tentacle.protocol.process import Process
from tentacle.protocol.wire import to_builtins


class ChannelNotFound(NotFound):
    """The process has no channel of that name."""


class ChannelRuleBroken(InvalidInput):
    """A given package version breaks a rule of the release's channel."""


class PackageMissing(NotFound):
    """The feed cannot supply a package version the release needs."""


class ReleaseVersionNeeded(InvalidInput):
    """No version was given and none can be made."""


def channel_of(process: Process, name: str) -> Channel:
    """The process's channel of that name; ChannelNotFound listing the channels there are."""
    channel = find_channel(process.channels, name)
    if channel is None:
        known = ", ".join(channel_names(process.channels))
        raise ChannelNotFound(
            f"channelName: project {process.name!r} has no channel {name[:200]!r} (it has: {known})",
            details={"path": "channelName", "channel": name[:200]},
        )
    return channel


def resolve_packages(
    conn: sqlite3.Connection, channel: Channel, wanted: Mapping[str, str | None], ignore_rules: bool
) -> dict[str, PackageRef]:
    """Pin every package; PackageMissing lists all that the feed cannot supply."""
    refs: dict[str, PackageRef] = {}
    missing: list[dict[str, Any]] = []
    for package_id, version in sorted(wanted.items()):
        known = feed.refs_by_version(conn, package_id)
        rules = Channel(name=channel.name) if ignore_rules else channel
        if version is None:
            found = rules.pick(package_id, known)
            if found is None:
                missing.append({"id": package_id, "version": None, "why": _none_allowed(rules, package_id)})
            else:
                refs[package_id] = known[found]
            continue
        _check_rules(rules, package_id, NuGetVersion.parse(version))
        ref = known.get(NuGetVersion.parse(version))
        if ref is None:
            missing.append({"id": package_id, "version": version})
        else:
            refs[package_id] = ref
    if missing:
        raise PackageMissing(
            "; ".join(_missing_text(item) for item in missing),
            details={"packages": [{"id": item["id"], "version": item["version"]} for item in missing]},
        )
    return refs


def _check_rules(channel: Channel, package_id: str, version: NuGetVersion) -> None:
    broken = channel.broken_rule(package_id, version)
    if broken is None:
        return
    path = key_path("packageVersions", package_id)
    raise ChannelRuleBroken(
        f"{path}: version {version} of {package_id} breaks the rule of channel {channel.name!r}"
        f" ({broken.describe()}); pass ignoreChannelRules to take it anyway",
        details={"path": path, "channel": channel.name, "rule": to_builtins(broken)},
    )


def _none_allowed(channel: Channel, package_id: str) -> str:
    rules = channel.rules_for(package_id)
    if not rules:
        return f"package {package_id!r} has no version in the feed (push one first)"
    shown = "; ".join(rule.describe() for rule in rules)
    return (
        f"no version of package {package_id!r} in the feed keeps the rule of channel"
        f" {channel.name!r} ({shown})"
    )


def _missing_text(item: dict[str, Any]) -> str:
    if item["version"] is None:
        return str(item["why"])
    path = key_path("packageVersions", item["id"])
    return f"{path}: package {item['id']!r} version {item['version']!r} is not in the feed"


def next_version(
    conn: sqlite3.Connection,
    space: str,
    process: Process,
    channel: Channel,
    packages: Mapping[str, PackageRef],
) -> str:
    """The version of a release created without one (normalized)."""
    if process.version_template is not None:
        last = _last_version(conn, space, process.name, None)
        in_channel = _last_version(conn, space, process.name, channel.name)
        text = expand_template(process.version_template, template_variables(last, in_channel))
        try:
            return str(NuGetVersion.parse(text))
        except InvalidVersion as exc:
            raise ReleaseVersionNeeded(f"versionTemplate: made {text!r}, {exc.message}") from exc
    versions = [NuGetVersion.parse(ref.version) for ref in packages.values()]
    if not versions:
        raise ReleaseVersionNeeded(
            f"releaseVersion: required (project {process.name!r} has no versionTemplate and no package"
            " to take a version from)",
            details={"path": "releaseVersion"},
        )
    return str(max(versions))


def _last_version(
    conn: sqlite3.Connection, space: str, project: str, channel: str | None
) -> NuGetVersion | None:
    """The version of the project's most recently created release (in ``channel``, if given)."""
    if channel is None:
        row = conn.execute(
            "SELECT version FROM releases WHERE space = ? AND project = ? ORDER BY created_at DESC LIMIT 1",
            (space, project),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT version FROM releases WHERE space = ? AND project = ? AND channel = ?"
            " ORDER BY created_at DESC LIMIT 1",
            (space, project, channel),
        ).fetchone()
    return None if row is None else NuGetVersion.parse(row["version"])
