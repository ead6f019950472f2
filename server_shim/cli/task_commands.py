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

from server_shim.cli import main as shim_cli
from server_shim.cli.api_client import ApiClient
from tentacle.common.paths import InstancePaths

FOLLOW_EVERY = 0.3
FINAL = ("success", "failed", "cancelled")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `deploy`, `runbook run` and `task show`."""
    deploy = sub.add_parser("deploy", help="deploy a release to environments (one request)")
    deploy.add_argument("--project", required=True)
    deploy.add_argument("--version", required=True, help="the release version")
    deploy.add_argument("--environment", action="append", required=True, help="repeatable")
    deploy.add_argument("--machine", action="append", default=[], help="only these machines (repeatable)")
    deploy.add_argument("--follow", action="store_true", help="print the live log; exit 1 unless success")
    shim_cli._client_flags(deploy)
    runbook = sub.add_parser("runbook", help="runbooks").add_subparsers(dest="action", required=True)
    run = runbook.add_parser("run", help="run a project's runbook (one request)")
    run.add_argument("--project", required=True)
    run.add_argument("--runbook", required=True)
    run.add_argument("--environment", action="append", required=True, help="repeatable")
    run.add_argument("--machine", action="append", default=[], help="only these machines (repeatable)")
    run.add_argument("--follow", action="store_true", help="print the live log; exit 1 unless success")
    shim_cli._client_flags(run)
    task = sub.add_parser("task", help="tasks").add_subparsers(dest="action", required=True)
    show = task.add_parser("show", help="a task's state and targets (one request)")
    show.add_argument("task_id", metavar="ID")
    show.add_argument("--follow", action="store_true", help="print the live log; exit 1 unless success")
    shim_cli._client_flags(show)


def _client(paths: InstancePaths, args: argparse.Namespace) -> ApiClient:
    return ApiClient.from_home(paths, args.server, args.api_key, args.ca)


def cmd_deploy(paths: InstancePaths, args: argparse.Namespace) -> int:
    client = _client(paths, args)
    body: dict[str, Any] = {
        "projectName": args.project,
        "releaseVersion": args.version,
        "environmentNames": args.environment,
    }
    if args.machine:
        body["machineNames"] = args.machine
    answer = asyncio.run(
        client.request("POST", client.path("deployments", "create", "untenanted", "v1"), body)
    )
    return _started(client, answer["taskId"], args.follow)


def cmd_runbook(paths: InstancePaths, args: argparse.Namespace) -> int:
    client = _client(paths, args)
    body: dict[str, Any] = {
        "projectName": args.project,
        "runbookName": args.runbook,
        "environmentNames": args.environment,
    }
    if args.machine:
        body["machineNames"] = args.machine
    answer = asyncio.run(client.request("POST", client.path("runbook-runs", "create", "v1"), body))
    return _started(client, answer["taskId"], args.follow)


def _started(client: ApiClient, task_id: str, follow: bool) -> int:
    print(task_id)
    return asyncio.run(follow_task(client, task_id)) if follow else 0


def cmd_task(paths: InstancePaths, args: argparse.Namespace) -> int:
    client = _client(paths, args)
    if args.follow:
        return asyncio.run(follow_task(client, args.task_id))
    task = asyncio.run(client.request("GET", client.path("tasks", args.task_id, "v1")))
    _print_task(task)
    return 0


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


COMMANDS: dict[str, shim_cli.Command] = {"deploy": cmd_deploy, "runbook": cmd_runbook, "task": cmd_task}
