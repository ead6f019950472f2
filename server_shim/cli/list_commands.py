"""`task list`, `release list`, `project list`: one request each to the lists the database builds.

server-shim task list [--state S] [--project P] [--take N] [--skip N] [--after TASKID] [--json]
server-shim release list [--project P] [--take N] [--skip N] [--json]
server-shim project list [--take N] [--skip N] [--json]

``--json`` prints the answer as the server sent it (``{items, totalCount}``); otherwise a
table, and a last line saying how many of how many were shown (and, for tasks, the
``--after`` that shows the next page).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import urlencode

from server_shim.cli.command import ClientCommand, Command
from tentacle.common.paths import InstancePaths


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--take", type=int, help="how many (1-1000; default 30)")
    parser.add_argument("--skip", type=int, help="skip this many first")
    parser.add_argument("--json", action="store_true", help="the answer as JSON")


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


class _ListCommand(ClientCommand):
    """One GET of a list route, printed as a table or as JSON."""

    route: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()  # the options that become query parameters, besides paging

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        names = (*self.filters, "take", "skip")
        query = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
        path = client.path(*self.route) + (f"?{urlencode(query)}" if query else "")
        answer = self.call(client.request("GET", path))
        if args.json:
            print(json.dumps(answer, indent=2))
            return 0
        for item in answer["items"]:
            print(self.line(item))
        print(f"({len(answer['items'])} of {answer['totalCount']}){self.more(answer)}")
        return 0

    def line(self, item: dict[str, Any]) -> str:
        """One item as a table row."""
        raise NotImplementedError

    def more(self, answer: dict[str, Any]) -> str:
        """What to add to the count line."""
        return ""


class TaskList(_ListCommand):
    """The space's tasks, newest first."""

    words = ("task", "list")
    help = "list tasks, newest first (--state, --project; --after TASKID for the next page)"
    route = ("tasks", "v1")
    filters = ("state", "project", "after")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--state", help="queued, running, success, failed or cancelled")
        parser.add_argument("--project", help="only this project's tasks")
        parser.add_argument("--after", metavar="TASKID", help="the page after this task")
        _paging(parser)

    def line(self, item: dict[str, Any]) -> str:
        what = item["runbookName"] or item["releaseVersion"] or ""
        return (
            f"{item['taskId']:<18} {item['state']:<10} {item['projectName']} {what} -> {item['environment']}"
            f"  {_when(item['createdAt'])}" + (f"  {item['error']}" if item["error"] else "")
        )

    def more(self, answer: dict[str, Any]) -> str:
        items = answer["items"]
        return f"; next page: --after {items[-1]['taskId']}" if items else ""


class ReleaseList(_ListCommand):
    """The space's releases, newest first."""

    words = ("release", "list")
    help = "list releases, newest first (--project)"
    route = ("releases", "v1")
    filters = ("project",)

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--project", help="only this project's releases")
        _paging(parser)

    def line(self, item: dict[str, Any]) -> str:
        project, version, channel = item["projectName"], item["version"], item["channelName"]
        return f"{project:<24} {version:<16} {channel:<12} {_when(item['createdAt'])}"


class ProjectList(_ListCommand):
    """The space's projects."""

    words = ("project", "list")
    help = "list projects by name"
    route = ("projects", "v1")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _paging(parser)

    def line(self, item: dict[str, Any]) -> str:
        return f"{item['name']:<32} updated {_when(item['updatedAt'])}"


COMMANDS: list[Command] = [TaskList(), ReleaseList(), ProjectList()]
