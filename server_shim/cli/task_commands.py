"""`deploy`, `runbook run` and `task show`: one request each, then `--follow` if asked.

``--follow`` prints every log line as it arrives (polling ``log/v1?since=``, which
also carries the task's state), then the final state; the command exits 1 when the
task did not succeed. ``deploy --tenant A --tenant-tag Region/EU`` is one tenanted
deployment: one request, one task per tenant (each printed as ``TASKID TENANT``);
``--follow`` then follows them all, and exits 1 unless every one succeeded.
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
from tentacle.errors import UsageError

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
        _deployment_options(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        body = _options_body(args)
        if args.tenant or args.tenant_tag:
            return self._tenanted(client, args, body)
        body.update(projectName=args.project, releaseVersion=args.version, environmentNames=args.environment)
        if args.machine:
            body["machineNames"] = args.machine
        path = client.path("deployments", "create", "untenanted", "v1")
        answer = self.call(client.request("POST", path, body))
        return _started(client, answer["taskId"], args.follow)

    def _tenanted(self, client: ApiClient, args: argparse.Namespace, body: dict[str, Any]) -> int:
        if len(args.environment) != 1:
            raise UsageError(
                "a tenanted deployment (--tenant, --tenant-tag) goes to exactly one --environment"
            )
        body.update(
            projectName=args.project, releaseVersion=args.version, environmentName=args.environment[0]
        )
        if args.tenant:
            body["tenantNames"] = args.tenant
        if args.tenant_tag:
            body["tenantTags"] = args.tenant_tag
        if args.machine:
            body["specificMachineNames"] = args.machine
        path = client.path("deployments", "create", "tenanted", "v1")
        answer = self.call(client.request("POST", path, body))
        started = [(item["taskId"], item["tenantName"]) for item in answer["deployments"]]
        for task_id, tenant in started:
            print(f"{task_id}  {tenant}", flush=True)
        return asyncio.run(follow_tasks(client, started)) if args.follow else 0


def _deployment_options(parser: argparse.ArgumentParser) -> None:
    """The options of both deployment routes, and the tenants of a tenanted one."""
    parser.add_argument("--tenant", action="append", default=[], help="deploy for this tenant (repeatable)")
    parser.add_argument(
        "--tenant-tag",
        action="append",
        default=[],
        metavar="SET/TAG",
        help="deploy for every tenant with this tag, e.g. Region/EU (repeatable: one set OR, sets AND)",
    )
    parser.add_argument(
        "--exclude-machine",
        action="append",
        default=[],
        metavar="NAME",
        help="leave this machine out (repeatable)",
    )
    parser.add_argument(
        "--skip-step", action="append", default=[], metavar="NAME", help="do not run this step (repeatable)"
    )
    parser.add_argument(
        "--force-package-redeployment",
        action="store_true",
        help="acquire every package again, even where it is cached",
    )
    parser.add_argument("--run-at", metavar="TIME", help="start no earlier than TIME (ISO 8601 with a zone)")
    parser.add_argument(
        "--no-run-after", metavar="TIME", help="cancel if not started by TIME (ISO 8601 with a zone)"
    )


def _options_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.exclude_machine:
        body["excludedMachineNames"] = args.exclude_machine
    if args.skip_step:
        body["skipStepNames"] = args.skip_step
    if args.force_package_redeployment:
        body["forcePackageRedeployment"] = True
    if args.run_at:
        body["runAt"] = args.run_at
    if args.no_run_after:
        body["noRunAfter"] = args.no_run_after
    return body


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
    tenant = f" for tenant {task['tenantName']}" if task.get("tenantName") else ""
    print(
        f"{task['taskId']}  {task['state']}  {task['kind']} {task['projectName']} {what}"
        f" to {','.join(task['environmentNames'])}{tenant}"
    )
    for target in task["targets"]:
        print(f"  {target['machineName']:<20} {target['phase']:<16} {target['state']}")
    if task.get("error"):
        print(f"error: {task['error']}")


def _print_line(line: dict[str, Any], label: str = "") -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(line["time"]))
    stream = "!" if line["stream"] == "stderr" else "|"
    print(f"{stamp} {label}{line['machineName']:<12} {stream} {line['text']}", flush=True)


async def follow_tasks(client: ApiClient, started: list[tuple[str, str]]) -> int:
    """Follow several tasks at once (lines labelled with their tenant); 0 when every one succeeded."""
    codes = await asyncio.gather(
        *(follow_task(client, task_id, f"{tenant}: ") for task_id, tenant in started)
    )
    failed = [tenant for (_, tenant), code in zip(started, codes, strict=True) if code]
    print(f"{len(started) - len(failed)} of {len(started)} tenant deployments succeeded", flush=True)
    if failed:
        print(f"not successful: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


async def follow_task(client: ApiClient, task_id: str, label: str = "") -> int:
    """Print the log live until the task ends; 0 when it succeeded."""
    since, state = 0, "queued"
    while True:
        page = await client.request("GET", client.path("tasks", task_id, "log", "v1") + f"?since={since}")
        for line in page["items"]:
            _print_line(line, label)
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
