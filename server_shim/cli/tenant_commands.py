"""Spaces, tag sets and tenants from the command line: one request each.

    server-shim space create NAME                 prints the new space's id alone
    server-shim space list [--json]
    server-shim tagset apply NAME --tag T [--tag T2 ...]
    server-shim tagset list [--json]
    server-shim tenant apply FILE [--name NAME]   the tenant document (JSON)
    server-shim tenant list [--json]

All are API clients (server_shim.cli.api_client) and take ``--space NAME`` like the others;
the server checks everything, so these read their input and report the answer.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from server_shim.cli.command import ClientCommand, Command
from server_shim.cli.project_commands import read_document
from tentacle.common.paths import InstancePaths
from tentacle.errors import UsageError


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


class SpaceCreate(ClientCommand):
    """`space create NAME`: one POST; prints the space's id alone."""

    words = ("space", "create")
    help = "create a space (prints its id alone, e.g. Spaces-2)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the space's name (letters, digits, '.', '_', '-')")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        answer = self.call(client.request("POST", "/api/spaces/v1", {"name": args.name}))
        print(answer["id"])
        return 0


class SpaceList(ClientCommand):
    """`space list [--json]`: one GET."""

    words = ("space", "list")
    help = "list the spaces with their ids"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _json_flag(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        items = self.call(client.request("GET", "/api/spaces/v1"))["items"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        print(f"{'ID':<12} NAME")
        for item in items:
            print(f"{item['id']:<12} {item['name']}")
        return 0


class TagSetApply(ClientCommand):
    """`tagset apply NAME --tag T ...`: one PUT."""

    words = ("tagset", "apply")
    help = "create or replace a tag set (its tags are then named SET/TAG)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the tag set's name, e.g. Region")
        parser.add_argument(
            "--tag", action="append", default=[], help="a tag of the set, e.g. EU (repeatable)"
        )

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        body = {"tags": args.tag}
        answer = self.call(client.request("PUT", client.path("tagsets", args.name, "v1"), body))
        tags = ", ".join(f"{answer['name']}/{tag}" for tag in answer["tags"]) or "no tags"
        print(f"applied tag set {answer['name']!r}: {tags}")
        return 0


class TagSetList(ClientCommand):
    """`tagset list [--json]`: one GET."""

    words = ("tagset", "list")
    help = "list the tag sets of the space"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _json_flag(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        items = self.call(client.request("GET", client.path("tagsets", "v1")))["items"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        for item in items:
            print(f"{item['name']:<20} {', '.join(item['tags'])}")
        return 0


def tenant_name(document: dict[str, Any], flag: str | None, file: str) -> str:
    """The name to apply under: ``--name``, else the document's ``name``."""
    name = flag if flag is not None else document.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f'{file}: no "name" in the document; pass --name NAME')
    return name


class TenantApply(ClientCommand):
    """`tenant apply FILE`: one PUT of the tenant document."""

    words = ("tenant", "apply")
    help = "create or replace a tenant from its document (JSON: name, tags, projects, variables)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", metavar="FILE", help="the tenant document")
        parser.add_argument("--name", help='tenant name (default: the document\'s "name")')

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        document = read_document(args.file, "the tenant document")
        name = tenant_name(document, args.name, args.file)
        client = self.client(paths, args)
        answer = self.call(client.request("PUT", client.path("tenants", name, "v1"), document))
        projects = ", ".join(answer["projects"]) or "no projects"
        print(f"applied tenant {answer['name']!r}: {projects}; tags: {', '.join(answer['tags']) or 'none'}")
        return 0


class TenantList(ClientCommand):
    """`tenant list [--json]`: one GET (sensitive values are never shown)."""

    words = ("tenant", "list")
    help = "list the tenants of the space"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _json_flag(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        items = self.call(client.request("GET", client.path("tenants", "v1")))["items"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        print(f"{'NAME':<24} {'TAGS':<30} PROJECTS")
        for item in items:
            projects = "; ".join(f"{p} ({', '.join(envs)})" for p, envs in item["projects"].items())
            print(f"{item['name']:<24} {', '.join(item['tags']) or '-':<30} {projects or '-'}")
        return 0


COMMANDS: list[Command] = [
    SpaceCreate(),
    SpaceList(),
    TagSetApply(),
    TagSetList(),
    TenantApply(),
    TenantList(),
]
