"""Reactions and events from the command line: one request each.

    server-shim reaction apply FILE [--name NAME]     the reaction document (JSON)
    server-shim reaction list [--json]
    server-shim reaction deliveries NAME [--take N] [--json]
    server-shim reaction fire NAME                    prints the test delivery's id alone
    server-shim reaction delete NAME
    server-shim events [--since SEQ] [--kind K ...] [--take N] [--json]

All are API clients (server_shim.cli.api_client) and take ``--space NAME``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from server_shim.cli.command import ClientCommand, Command
from server_shim.cli.project_commands import read_document
from server_shim.cli.tenant_commands import tenant_name
from tentacle.common.paths import InstancePaths


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def describe(reaction: dict[str, Any]) -> str:
    """One line: what sets the reaction off, and what it does."""
    trigger, action = reaction["trigger"], reaction["action"]
    if trigger.get("webhook"):
        when = f"webhook POST {reaction.get('hookPath') or ''}".rstrip()
    else:
        keys = ("projects", "environments", "tenants", "roles")
        narrowed = [f"{key}={','.join(trigger[key])}" for key in keys if trigger.get(key)]
        when = "on " + ",".join(trigger["events"]) + (f" ({'; '.join(narrowed)})" if narrowed else "")
    if action.get("http"):
        http = action["http"]
        what = f"http {http['method']} {http['url']}" + (" (signed)" if http.get("hasSecret") else "")
    elif action.get("script"):
        what = f"script ({action['script']['syntax']})"
    else:
        deploy = action["deploy"]
        what = f"deploy latest {deploy['projectName']} to {deploy['environmentName']}"
    return f"{when} -> {what}"


class ReactionApply(ClientCommand):
    """`reaction apply FILE`: one PUT of the reaction document."""

    words = ("reaction", "apply")
    help = "create or replace a reaction from its document (JSON: name, trigger, action)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", metavar="FILE", help="the reaction document")
        parser.add_argument("--name", help='reaction name (default: the document\'s "name")')

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        document = read_document(args.file, "the reaction document")
        name = tenant_name(document, args.name, args.file)
        client = self.client(paths, args)
        answer = self.call(client.request("PUT", client.path("reactions", name, "v1"), document))
        print(f"applied reaction {answer['name']!r}: {describe(answer)}")
        return 0


class ReactionList(ClientCommand):
    """`reaction list [--json]`: one GET (secrets are never shown)."""

    words = ("reaction", "list")
    help = "list the reactions of the space"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _json_flag(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        items = self.call(client.request("GET", client.path("reactions", "v1")))["items"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        for item in items:
            print(f"{item['name']:<24} {describe(item)}")
        return 0


class ReactionDeliveries(ClientCommand):
    """`reaction deliveries NAME`: one GET; the newest first, one line each."""

    words = ("reaction", "deliveries")
    help = "show a reaction's deliveries: time, attempt, status, response code, duration, error"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the reaction")
        parser.add_argument("--take", type=int, default=50, help="how many, newest first (default 50)")
        _json_flag(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        path = client.path("reactions", args.name, "deliveries", "v1") + f"?take={args.take}"
        items = self.call(client.request("GET", path))["items"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        heads = ("TIME", "DELIVERY", "EVENT", "ATTEMPT", "STATUS", "CODE", "SECONDS")
        print("{:<25} {:<37} {:<20} {:>7} {:<10} {:>4} {:>8} ERROR".format(*heads))
        for item in items:
            seconds = "-" if item["duration"] is None else f"{item['duration']:.3f}"
            print(
                f"{item['time'] or item['createdAt']:<25} {item['deliveryId']:<37} {item['eventKind']:<20}"
                f" {item['attempt']:>7} {item['status']:<10} {item['responseCode'] or '-':>4} {seconds:>8}"
                f" {item['error'] or ''}"
            )
        return 0


class ReactionFire(ClientCommand):
    """`reaction fire NAME`: one POST; prints the test delivery's id alone."""

    words = ("reaction", "fire")
    help = "send the reaction a test event now (prints the delivery id alone)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the reaction")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        answer = self.call(client.request("POST", client.path("reactions", args.name, "fire", "v1")))
        print(answer["deliveryId"])
        return 0


class ReactionDelete(ClientCommand):
    """`reaction delete NAME`: one DELETE."""

    words = ("reaction", "delete")
    help = "delete a reaction (its waiting deliveries are not sent)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", metavar="NAME", help="the reaction")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        answer = self.call(client.request("DELETE", client.path("reactions", args.name, "v1")))
        print(f"deleted reaction {answer['name']!r}")
        return 0


class EventList(ClientCommand):
    """`events`: one GET of a page of events."""

    words = ("events",)
    help = "list events (numbered; --since SEQ pages on)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--since", type=int, default=0, help="events after this number (default 0)")
        parser.add_argument("--kind", action="append", default=[], help="only this kind (repeatable)")
        parser.add_argument("--take", type=int, default=100, help="at most this many (default 100)")
        _json_flag(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        query = f"?since={args.since}&take={args.take}" + "".join(f"&kind={kind}" for kind in args.kind)
        answer = self.call(client.request("GET", client.path("events", "v1") + query))
        if args.json:
            print(json.dumps(answer, indent=2))
            return 0
        for item in answer["items"]:
            about = [
                item.get(k) for k in ("projectName", "releaseVersion", "machineName", "taskId", "taskState")
            ]
            envs = ",".join(item["environmentNames"])
            said = " ".join(a for a in [*about, envs] if a)
            print(f"{item['seq']:>8} {item['time']} {item['kind']:<20} {said}")
        return 0


COMMANDS: list[Command] = [
    ReactionApply(),
    ReactionList(),
    ReactionDeliveries(),
    ReactionFire(),
    ReactionDelete(),
    EventList(),
]
