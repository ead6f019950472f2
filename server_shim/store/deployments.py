"""From a deployment or runbook request to tasks: targets chosen, plans resolved.

Runs inside one database transaction (`Database.run`), so a request that names an
unknown project, release, environment, machine, step or tenant creates nothing. Targets
are the machines of the named environments that hold at least one role of the steps
not skipped, narrowed by the options (``specificMachineNames``, ``excludedMachineNames``);
each gets its own resolved plan. An untenanted task goes to machines that take part in
untenanted deployments (``untenanted`` or ``both``); a tenanted deployment makes one task
per tenant (server_shim.store.tenant_choice picks them), each for the tenanted machines
that serve that tenant, with the tenant's variables over the project's.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from server_shim.store import feed_store as feed
from server_shim.store import machine_rows as machines
from server_shim.store import project_rows as projects
from server_shim.store import task_rows as tasks
from server_shim.store import tenant_choice
from server_shim.store.machine_rows import Machine
from server_shim.store.task_rows import TaskRecord
from server_shim.store.tenants import StoredTenant, serves
from tentacle.errors import InvalidInput, NotFound
from tentacle.protocol.coordinator import TaskCoordinator
from tentacle.protocol.plan import Kind, PackageRef, Plan, PlanError, resolve_plan
from tentacle.protocol.process import Process, Step


class TargetError(InvalidInput):
    """The request names environments or machines that give no usable targets."""


@dataclass(frozen=True)
class Options:
    """The deployment options both create-deployment routes take."""

    specific_machines: tuple[str, ...] = ()
    excluded_machines: tuple[str, ...] = ()
    skip_steps: tuple[str, ...] = ()
    force_package_redeployment: bool = False
    run_at: float | None = None
    no_run_after: float | None = None


@dataclass(frozen=True)
class Request:
    """What the caller asked for (already type-checked); ``machine_names`` are the specific ones."""

    space: str
    kind: Kind
    project: str
    release_version: str
    runbook: str | None
    environments: tuple[str, ...]
    machine_names: tuple[str, ...]
    options: Options = field(default_factory=Options)


@dataclass(frozen=True)
class TenantedRequest:
    """A tenanted deployment: one environment, tenants by name and by tag filter."""

    space: str
    project: str
    release_version: str
    environment: str
    tenant_names: tuple[str, ...]
    tenant_tags: tuple[str, ...]
    options: Options = field(default_factory=Options)


@dataclass(frozen=True)
class _Source:
    """What every task of one request deploys: the steps, their packages, the release version."""

    process: Process
    steps: Sequence[Step]
    packages: dict[str, PackageRef]
    version: str


def new_task_id() -> str:
    """A short, unguessable task id."""
    return "T-" + secrets.token_hex(6)


def _source(conn: sqlite3.Connection, req: Request) -> _Source:
    if req.kind == "deployment":
        release = projects.get_release(conn, req.space, req.project, req.release_version)
        return _Source(release.process, release.process.steps, release.packages, release.version)
    process = projects.get_project(conn, req.space, req.project)
    runbook = process.runbooks.get(req.runbook or "")
    if runbook is None:
        raise NotFound(f"runbook {req.runbook!r} does not exist in project {req.project!r}")
    ids = {s.package.id for s in runbook.steps if s.package is not None}
    return _Source(process, runbook.steps, {i: feed.resolve(conn, i, None) for i in sorted(ids)}, "")


def _check_options(conn: sqlite3.Connection, req: Request, source: _Source) -> None:
    """Every machine and step the options name exists; no machine is both specific and excluded."""
    known = machines.existing_names(conn, req.space, [*req.machine_names, *req.options.excluded_machines])
    for path, names in (
        ("specificMachineNames", req.machine_names),
        ("excludedMachineNames", req.options.excluded_machines),
    ):
        for index, name in enumerate(names):
            if name not in known:
                raise NotFound(
                    f"{path}[{index}]: machine {name!r} does not exist in space {req.space!r}",
                    details={"path": f"{path}[{index}]", "machine": name},
                )
    both = [name for name in req.machine_names if name in req.options.excluded_machines]
    if both:
        raise TargetError(
            f"excludedMachineNames: {', '.join(both)} also named in specificMachineNames",
            details={"path": "excludedMachineNames", "machines": both},
        )
    steps = {step.name for step in source.steps}
    for index, name in enumerate(req.options.skip_steps):
        if name not in steps:
            raise NotFound(
                f"skipStepNames[{index}]: project {req.project!r} has no step {name!r}",
                details={"path": f"skipStepNames[{index}]", "step": name},
            )
    if steps and steps <= set(req.options.skip_steps):
        raise TargetError("skipStepNames: every step is skipped", details={"path": "skipStepNames"})


def _in_environments(conn: sqlite3.Connection, req: Request) -> list[tuple[Machine, str]]:
    """Each machine of the named environments with the first of them it is in."""
    found = machines.in_environments(conn, req.space, req.environments)
    known = {env for m in found for env in m.environments}
    for env in req.environments:
        if env not in known:
            raise NotFound(f"environment {env!r} has no machines (or does not exist)")
    return [(m, next(e for e in req.environments if e in m.environments)) for m in found]


def _targets(
    req: Request, steps: Sequence[Step], in_envs: list[tuple[Machine, str]], tenant: StoredTenant | None
) -> list[tuple[Machine, str]]:
    """The machines one task goes to: in the environments, for its audience, by the options."""
    if req.machine_names:
        chosen = {m.name for m, _ in in_envs}
        outside = [n for n in req.machine_names if n not in chosen]
        if outside:
            raise TargetError(f"machines {', '.join(outside)} are not in {', '.join(req.environments)}")
        in_envs = [(m, e) for m, e in in_envs if m.name in req.machine_names]
    in_envs = [(m, e) for m, e in in_envs if m.name not in req.options.excluded_machines]
    if tenant is None:
        tenanted_only = [
            m.name for m, _ in in_envs if m.tenanted_deployment == "tenanted" and req.machine_names
        ]
        if tenanted_only:
            raise TargetError(f"machines {', '.join(tenanted_only)} take part in tenanted deployments only")
        in_envs = [(m, e) for m, e in in_envs if m.tenanted_deployment != "tenanted"]
    else:
        tags = tenant.document.tags
        in_envs = [
            (m, e)
            for m, e in in_envs
            if m.tenanted_deployment != "untenanted" and serves(m.tenants, m.tenant_tags, tenant.name, tags)
        ]
    roles = {role for step in steps if step.name not in req.options.skip_steps for role in step.roles}
    return [(m, e) for m, e in in_envs if set(m.roles) & roles]


def _no_targets(req: Request, steps: Sequence[Step], tenant: StoredTenant | None) -> TargetError:
    roles = {role for step in steps if step.name not in req.options.skip_steps for role in step.roles}
    who = "no machine" if tenant is None else f"tenant {tenant.name!r}: no tenanted machine of the tenant"
    return TargetError(
        f"{who} in {', '.join(req.environments)} has any of the roles "
        f"{', '.join(sorted(roles)) or '(none: the process has no steps)'}"
        + ("" if req.options.excluded_machines == () else " (after excludedMachineNames)"),
        details={"tenant": tenant.name} if tenant else {},
    )


def _task(
    req: Request,
    source: _Source,
    targets: list[tuple[Machine, str]],
    tenant: StoredTenant | None,
    feeds: dict[str, list[str]],
) -> TaskRecord:
    """A queued task for these targets (plans resolved; nothing stored yet)."""
    task_id = new_task_id()
    variables = tenant.document.variables_for(req.project) if tenant else []
    plans: dict[str, Plan] = {}
    for machine, env in targets:
        try:
            plans[machine.name] = resolve_plan(
                task_id=task_id,
                kind=req.kind,
                steps=source.steps,
                variables=source.process.variables,
                project_name=req.project,
                release_version=source.version,
                environment=env,
                machine_name=machine.name,
                machine_roles=machine.roles,
                packages=source.packages,
                feeds=feeds,
                skip_steps=req.options.skip_steps,
                tenant_name=tenant.name if tenant else None,
                tenant_variables=variables,
                force_package_redeployment=req.options.force_package_redeployment,
            )
        except PlanError as exc:
            raise TargetError(exc.message) from exc
    return TaskRecord(
        task_id=task_id,
        space=req.space,
        kind=req.kind,
        project=req.project,
        release_version=source.version,
        runbook=req.runbook,
        environment=",".join(req.environments),
        state="queued",
        error=None,
        created_at=time.time(),
        finished_at=None,
        plans=plans,
        coordinator=TaskCoordinator(task_id, plans).snapshot(),
        tenant=tenant.name if tenant else None,
        run_at=req.options.run_at,
        no_run_after=req.options.no_run_after,
    )


def create(conn: sqlite3.Connection, req: Request) -> TaskRecord:
    """Resolve and store a queued task; raises a 4xx-classed error and stores nothing on bad input."""
    source = _source(conn, req)
    _check_options(conn, req, source)
    targets = _targets(req, source.steps, _in_environments(conn, req), None)
    if not targets:
        raise _no_targets(req, source.steps, None)
    record = _task(req, source, targets, None, feed.feed_mirrors(conn, req.space))
    tasks.insert(conn, record)
    return record


def create_tenanted(conn: sqlite3.Connection, treq: TenantedRequest) -> list[TaskRecord]:
    """One queued task per tenant, all stored or (on any error) none."""
    req = Request(
        space=treq.space,
        kind="deployment",
        project=treq.project,
        release_version=treq.release_version,
        runbook=None,
        environments=(treq.environment,),
        machine_names=treq.options.specific_machines,
        options=treq.options,
    )
    source = _source(conn, req)
    _check_options(conn, req, source)
    chosen = tenant_choice.choose(
        conn, treq.space, treq.project, treq.environment, treq.tenant_names, treq.tenant_tags
    )
    in_envs = _in_environments(conn, req)
    feeds = feed.feed_mirrors(conn, req.space)
    records: list[TaskRecord] = []
    used: set[str] = set()
    for tenant in chosen:
        targets = _targets(req, source.steps, in_envs, tenant)
        if not targets:
            raise _no_targets(req, source.steps, tenant)
        used.update(m.name for m, _ in targets)
        records.append(_task(req, source, targets, tenant, feeds))
    unused = [name for name in req.machine_names if name not in used]
    if unused:
        raise TargetError(
            f"specificMachineNames: {', '.join(unused)} serve none of the tenants"
            f" {', '.join(t.name for t in chosen)}",
            details={"path": "specificMachineNames", "machines": unused},
        )
    for record in records:
        tasks.insert(conn, record)
    return records
