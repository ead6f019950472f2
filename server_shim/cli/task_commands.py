"""`deploy`, `runbook run` and `task show`: one request each, then `--follow` if asked.

``--follow`` prints every log line as it arrives (polling ``log/v1?since=``, which
also carries the task's state), then the final state; the command exits 1 when the
task did not succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from server_shim.cli.api_client import ApiClient
from server_shim.cli.command import ClientCommand, Command
from tentacle.common.paths import InstancePaths

FOLLOW_EVERY = 0.3
FINAL = ("success", "failed", "cancelled")


def _targets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", required=True)
    parser.add_argument("--environment", action="append", required=True, help="repeatable")
    parser.add_argument("--machine", action="append", default=[], help="only these machines (repeatable)")
    parser.add_argument("--follow", action="store_true", help="print the live log; exit 1 unless success")


class Deploy(ClientCommand):
    """Deploy a release: one request, then the live log with --follow."""

    words = ("deploy",)
    help = "deploy a release to environments (one request)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _targets(parser)
        parser.add_argument("--version", required=True, help="the release version")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        body: dict[str, Any] = {
            "projectName": args.project,
            "releaseVersion": args.version,
            "environmentNames": args.environment,
        }
        if args.machine:
            body["machineNames"] = args.machine
        path = client.path("deployments", "create", "untenanted", "v1")
        answer = self.call(client.request("POST", path, body))
        return _started(client, answer["taskId"], args.follow)


class RunbookRun(ClientCommand):
    """Run a runbook: one request, then the live log with --follow."""

    words = ("runbook", "run")
    help = "run a project's runbook (one request)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        _targets(parser)
        parser.add_argument("--runbook", required=True)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        body: dict[str, Any] = {
            "projectName": args.project,
            "runbookName": args.runbook,
            "environmentNames": args.environment,
        }
        if args.machine:
            body["machineNames"] = args.machine
        answer = self.call(client.request("POST", client.path("runbook-runs", "create", "v1"), body))
        return _started(client, answer["taskId"], args.follow)


class TaskShow(ClientCommand):
    """A task's state and targets, or its live log with --follow."""

    words = ("task", "show")
    help = "a task's state and targets (one request)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("task_id", metavar="ID")
        parser.add_argument("--follow", action="store_true", help="print the live log; exit 1 unless success")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        if args.follow:
            return asyncio.run(follow_task(client, args.task_id))
        task = self.call(client.request("GET", client.path("tasks", args.task_id, "v1")))
        _print_task(task)
        return 0


def _started(client: ApiClient, task_id: str, follow: bool) -> int:
    print(task_id)
    return asyncio.run(follow_task(client, task_id)) if follow else 0


def _print_task(task: dict[str, Any]) -> None:
    what = task["releaseVersion"] or task["runbookName"]
    print(
        f"{task['taskId']}  {task['state']}  {task['kind']} {task['projectName']} {what}"
        f" to {','.join(task['environmentNames'])}"
    )
    for target in task["targets"]:
        print(f"  {target['machineName']:<20} {target['phase']:<16} {target['state']}")
    if task.get("error"):
        print(f"error: {task['error']}")


def _print_line(line: dict[str, Any]) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(line["time"]))
    stream = "!" if line["stream"] == "stderr" else "|"
    print(f"{stamp} {line['machineName']:<12} {stream} {line['text']}", flush=True)


async def follow_task(client: ApiClient, task_id: str) -> int:
    """Print the log live until the task ends; 0 when it succeeded."""
    since, state = 0, "queued"
    while True:
        page = await client.request("GET", client.path("tasks", task_id, "log", "v1") + f"?since={since}")
        for line in page["items"]:
            _print_line(line)
        since, state = page["nextSince"], page["taskState"]
        if state in FINAL and not page["more"]:
            break
        if not page["more"]:
            await asyncio.sleep(FOLLOW_EVERY)
    task = await client.request("GET", client.path("tasks", task_id, "v1"))
    print()
    _print_task(task)
    sys.stdout.flush()
    return 0 if task["state"] == "success" else 1


COMMANDS: list[Command] = [Deploy(), RunbookRun(), TaskShow()]
