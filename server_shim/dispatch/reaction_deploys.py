"""A reaction's deploy action: the latest release of a project to an environment.

On ``machineRegistered`` or ``machineOnline`` the deployment goes to that machine alone:
Octopus's deployment target trigger, so a new web server gets the current release
without anyone asking. Such a delivery is skipped (and succeeds, saying why) when the
machine is not in the environment, has none of the release's roles, serves tenants only,
or already has that release or a task on the way with it.

The task is created and the delivery's success recorded in one transaction: a server
killed at any point either did both or neither, so a delivery never deploys twice.
A refusal (no release, no targets) fails the delivery for good; a storage failure is
retried. A deployment set off by an event of a deployment of the same project to the same
environment is skipped (succeeding, saying why): it would set itself off again, forever.
"""

from __future__ import annotations

import sqlite3
import time

from server_shim.dispatch import books
from server_shim.dispatch.dispatcher import Dispatcher
from server_shim.store import delivery_rows as outbox
from server_shim.store import deploy_history, deployments
from server_shim.store import machine_rows as machines
from server_shim.store import project_rows as projects
from server_shim.store.delivery_rows import Attempt, Due
from server_shim.store.events import DEPLOYMENT_KINDS
from server_shim.store.project_rows import Release
from server_shim.store.task_rows import TaskRecord
from tentacle.errors import NotFound, TentacleError
from tentacle.protocol.reactions import DeployAction

TARGET_KINDS = frozenset({"machineRegistered", "machineOnline"})


class NoRelease(NotFound):
    """The project has no release to deploy."""


class Deployer:
    """Creates the deployments of reactions and hands them to the dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def run(self, due: Due, deploy: DeployAction) -> Attempt | None:
        """Deploy; None when the attempt is recorded already (with the task), else the failure."""
        started, clock = time.time(), time.monotonic()
        try:
            records = await self.dispatcher.db.run(_deploy, due, deploy, started, clock)
        except Exception as exc:
            if books.is_bookkeeping(exc) or (isinstance(exc, TentacleError) and exc.retryable):
                return Attempt(
                    "retrying", started, time.monotonic() - clock, error=books.storage_error(exc).message
                )
            if isinstance(exc, TentacleError):
                return Attempt("failed", started, time.monotonic() - clock, error=exc.message)
            raise
        if records:
            await self.dispatcher.submit(*records)
        return None


def _deploy(
    conn: sqlite3.Connection, due: Due, deploy: DeployAction, started: float, clock: float
) -> list[TaskRecord]:
    """Create the task (or decide to skip) and record the attempt, in one transaction."""
    space, project, env = due.space, deploy.project_name, deploy.environment_name
    projects.get_project(conn, space, project)  # an unknown project is named as such
    release = projects.latest_release(conn, space, project)
    if release is None:
        raise NoRelease(f"project {project!r} has no release to deploy")
    if _loops(due, project, env):
        _done(conn, due, started, clock, f"skipped: a deployment of {project} to {env} set this off (a loop)")
        return []
    machine = due.payload.machine_name if due.payload.kind in TARGET_KINDS else None
    if machine is not None:
        skip = _skip_reason(conn, space, env, release, machine)
        if skip is not None:
            _done(conn, due, started, clock, f"skipped: {skip}")
            return []
    chosen = (machine,) if machine else ()
    request = deployments.Request(
        space=space,
        kind="deployment",
        project=project,
        release_version=release.version,
        runbook=None,
        environments=(env,),
        machine_names=chosen,
        options=deployments.Options(specific_machines=chosen),
    )
    record = deployments.create(conn, request)
    to = f" (machine {machine})" if machine else ""
    _done(conn, due, started, clock, f"task {record.task_id}: {project} {release.version} to {env}{to}")
    return [record]


def _loops(due: Due, project: str, env: str) -> bool:
    """Whether the event is one of a deployment that this action would start again."""
    event = due.payload
    same = event.project_name == project and env in event.environment_names
    return same and event.kind in DEPLOYMENT_KINDS.values()


def _done(conn: sqlite3.Connection, due: Due, started: float, clock: float, log: str) -> None:
    outbox.finish_attempt(conn, due, Attempt("succeeded", started, time.monotonic() - clock, log=log), None)


def _skip_reason(conn: sqlite3.Connection, space: str, env: str, release: Release, name: str) -> str | None:
    """Why this machine does not get the release now, or None when it should."""
    machine = machines.find(conn, space, name)
    if machine is None:
        return f"machine {name!r} is no longer registered"
    if env not in machine.environments:
        return f"machine {name!r} is not in environment {env!r}"
    roles = {role for step in release.process.steps for role in step.roles}
    if not roles & set(machine.roles):
        return f"machine {name!r} has none of the roles {', '.join(sorted(roles)) or '(none)'}"
    if machine.tenanted_deployment == "tenanted":
        return f"machine {name!r} takes part in tenanted deployments only"
    task = deploy_history.release_task_for(conn, space, release.project, release.version, name)
    if task is not None:
        return f"machine {name!r} already has release {release.version} (task {task})"
    return None
