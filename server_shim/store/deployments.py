"""From a deployment or runbook request to a task: targets chosen, plans resolved.

Runs inside one database transaction (`Database.run`), so a request that names an
unknown project, release, environment or machine creates nothing. Targets are the
machines of the named environments (optionally narrowed to named machines) that
hold at least one role of the steps; each gets its own resolved plan.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from server_shim.store import feed_store as feed
from server_shim.store import machine_rows as machines
from server_shim.store import project_rows as projects
from server_shim.store import task_rows as tasks
from server_shim.store.machine_rows import Machine
from server_shim.store.task_rows import TaskRecord
from tentacle.errors import InvalidInput, NotFound
from tentacle.protocol.coordinator import TaskCoordinator
from tentacle.protocol.plan import Kind, PackageRef, Plan, PlanError, resolve_plan
from tentacle.protocol.process import Process, Step


class TargetError(InvalidInput):
    """The request names environments or machines that give no usable targets."""


@dataclass(frozen=True)
class Request:
    """What the caller asked for (already type-checked)."""

    space: str
    kind: Kind
    project: str
    release_version: str
    runbook: str | None
    environments: tuple[str, ...]
    machine_names: tuple[str, ...]


def new_task_id() -> str:
    """A short, unguessable task id."""
    return "T-" + secrets.token_hex(6)


def _steps(
    conn: sqlite3.Connection, req: Request
) -> tuple[Process, Sequence[Step], dict[str, PackageRef], str]:
    if req.kind == "deployment":
        release = projects.get_release(conn, req.space, req.project, req.release_version)
        return release.process, release.process.steps, release.packages, release.version
    process = projects.get_project(conn, req.space, req.project)
    runbook = process.runbooks.get(req.runbook or "")
    if runbook is None:
        raise NotFound(f"runbook {req.runbook!r} does not exist in project {req.project!r}")
    ids = {s.package.id for s in runbook.steps if s.package is not None}
    return process, runbook.steps, {i: feed.resolve(conn, i, None) for i in sorted(ids)}, ""


def _targets(conn: sqlite3.Connection, req: Request, steps: Sequence[Step]) -> list[tuple[Machine, str]]:
    everyone = machines.listing(conn, req.space)
    known = {env for m in everyone for env in m.environments}
    for env in req.environments:
        if env not in known:
            raise NotFound(f"environment {env!r} has no machines (or does not exist)")
    in_envs = [
        (m, next(e for e in req.environments if e in m.environments))
        for m in everyone
        if set(m.environments) & set(req.environments)
    ]
    if req.machine_names:
        by_name = {m.name: m for m in everyone}
        for name in req.machine_names:
            if name not in by_name:
                raise NotFound(f"machine {name!r} does not exist")
        chosen = {m.name for m, _ in in_envs}
        outside = [n for n in req.machine_names if n not in chosen]
        if outside:
            raise TargetError(f"machines {', '.join(outside)} are not in {', '.join(req.environments)}")
        in_envs = [(m, e) for m, e in in_envs if m.name in req.machine_names]
    roles = {role for step in steps for role in step.roles}
    targets = [(m, e) for m, e in in_envs if set(m.roles) & roles]
    if not targets:
        raise TargetError(
            f"no machine in {', '.join(req.environments)} has any of the roles "
            f"{', '.join(sorted(roles)) or '(none: the process has no steps)'}"
        )
    return targets


def create(conn: sqlite3.Connection, req: Request) -> TaskRecord:
    """Resolve and store a queued task; raises a 4xx-classed error and stores nothing on bad input."""
    process, steps, packages, version = _steps(conn, req)
    targets = _targets(conn, req, steps)
    task_id, feeds = new_task_id(), feed.feed_mirrors(conn)
    plans: dict[str, Plan] = {}
    for machine, env in targets:
        try:
            plans[machine.name] = resolve_plan(
                task_id=task_id,
                kind=req.kind,
                steps=steps,
                variables=process.variables,
                project_name=req.project,
                release_version=version,
                environment=env,
                machine_name=machine.name,
                machine_roles=machine.roles,
                packages=packages,
                feeds=feeds,
            )
        except PlanError as exc:
            raise TargetError(exc.message) from exc
    coordinator = TaskCoordinator(task_id, plans)
    record = TaskRecord(
        task_id=task_id,
        space=req.space,
        kind=req.kind,
        project=req.project,
        release_version=version,
        runbook=req.runbook,
        environment=",".join(req.environments),
        state="queued",
        error=None,
        created_at=time.time(),
        finished_at=None,
        plans=plans,
        coordinator=coordinator.snapshot(),
    )
    tasks.insert(conn, record)
    return record
