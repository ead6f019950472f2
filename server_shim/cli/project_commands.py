"""`server-shim project apply` and `server-shim release create`: one request each.

    server-shim project apply FILE [--name NAME]
    server-shim release create --project P [--version V] [--channel NAME] [--package ID=VERSION ...]
                               [--ignore-channel-rules]

Both are API clients (see `server_shim.cli.api_client`); the server validates everything, so
these only read their input and report the answer. `release create` prints the
release version alone, for scripts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from server_shim.cli.command import ClientCommand, Command
from tentacle.common.paths import InstancePaths
from tentacle.errors import TentacleError, UsageError


def read_document(file: str, what: str = "the process document") -> dict[str, Any]:
    """The JSON document in ``file``, decoded (the server validates it)."""
    path = Path(file)
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise TentacleError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TentacleError(f"{file}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except ValueError as exc:
        raise TentacleError(f"{file}: not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise TentacleError(f"{file}: must hold a JSON object ({what})")
    return document


def project_name(document: dict[str, Any], flag: str | None, file: str) -> str:
    """The name to apply under: ``--name``, else the document's ``name``."""
    name = flag if flag is not None else document.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f'{file}: no "name" in the document; pass --name NAME')
    return name


def package_versions(pairs: list[str]) -> dict[str, str]:
    """``--package ID=VERSION`` flags as a mapping; a malformed or repeated one is a usage error."""
    versions: dict[str, str] = {}
    for pair in pairs:
        package_id, sep, version = pair.partition("=")
        if not sep or not package_id or not version:
            raise UsageError(f"--package must be ID=VERSION, not {pair!r}")
        if package_id.lower() in (known.lower() for known in versions):
            raise UsageError(f"--package {package_id}: given twice")
        versions[package_id] = version
    return versions


class ProjectApply(ClientCommand):
    """`project apply FILE`: one PUT of the document."""

    words = ("project", "apply")
    help = "create or replace a project from its process document (JSON)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", metavar="FILE", help="the process document")
        parser.add_argument("--name", help='project name (default: the document\'s "name")')

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        document = read_document(args.file)
        name = project_name(document, args.name, args.file)
        client = self.client(paths, args)
        answer = self.call(client.request("PUT", client.path("projects", name, "v1"), document))
        runbooks = ", ".join(answer["runbooks"]) or "none"
        print(f"applied project {answer['name']!r}: {answer['steps']} steps; runbooks: {runbooks}")
        return 0


class ReleaseCreate(ClientCommand):
    """`release create`: one POST; prints the release version alone."""

    words = ("release", "create")
    help = "create a release (prints its version alone)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--project", required=True, help="project name")
        parser.add_argument(
            "--version",
            help="release version, a NuGet version (default: from the project's versionTemplate,"
            " else the newest package's version)",
        )
        parser.add_argument(
            "--channel", help="the channel whose rules pick package versions (default: Default)"
        )
        parser.add_argument(
            "--package",
            action="append",
            default=[],
            metavar="ID=VERSION",
            help="pin a package version (default: the newest in the feed the channel allows); repeatable",
        )
        parser.add_argument(
            "--ignore-channel-rules",
            action="store_true",
            help="take given versions even if the channel's rules refuse them",
        )

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        body: dict[str, Any] = {"projectName": args.project}
        if args.version is not None:
            body["releaseVersion"] = args.version
        if args.channel is not None:
            body["channelName"] = args.channel
        if args.ignore_channel_rules:
            body["ignoreChannelRules"] = True
        if args.package:
            body["packageVersions"] = package_versions(args.package)
        client = self.client(paths, args)
        answer = self.call(client.request("POST", client.path("releases", "create", "v1"), body))
        print(answer["releaseVersion"])
        return 0


COMMANDS: list[Command] = [ProjectApply(), ReleaseCreate()]
