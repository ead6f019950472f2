"""Create benchmark: create-release and create-deployment on a large database, through the API.

A real ``server-shim run`` process whose database holds 1,000 projects (each: a package step
and a script step, two variables, a channel), 100 tenants (each connected to 10 projects in
Dev, with tags), 100,000 releases (100 per project) and 200,000 finished tasks, 50 package ids
x 20 versions in the built-in feed and 20 registered machines in Dev (``--quick``: a tenth of
projects, releases, tasks). Rows are written in bulk, straight into SQLite, in the shapes the
store writes (the migrations made the schema).

(a) Latency, one keep-alive HTTPS connection, one request at a time (p50, p95 over 500
    requests each after 50 warm-up; ``--quick``: 200): create-release (a new version of a
    random project, package versions picked by the channel), create-deployment (an
    existing release of a random project to Dev), and a tenanted deployment to one tenant.
(b) Throughput: 20 concurrent clients (one connection each), 1,000 creations (half
    releases, half deployments; ``--quick``: 400): creations per second.

The machines never connect: the deployments queue behind each other on them, as they would
behind a busy fleet, and every create still resolves and stores its plans.
Targets: p95 <= 20 ms for each kind; >= 500 creations/s.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from rigs.instances import Server
from server_shim import server_config
from server_shim.store.database import Database
from tentacle.common.paths import resolve
from tentacle.protocol.coordinator import TaskCoordinator
from tentacle.protocol.plan import Plan

TARGET_MS, TARGET_RATE = 20.0, 500.0
PACKAGE_IDS, PACKAGE_VERSIONS = 50, 20
MACHINES, TENANTS = 20, 100
SHA = "ab" * 64


def process(n: int) -> dict[str, Any]:
    """Project ``n``'s process document (normalized, as the store keeps it)."""
    package_id = f"Bench.App{n % PACKAGE_IDS:02d}"
    return {
        "name": f"Project{n:04d}",
        "steps": [
            {
                "name": "Deploy",
                "phase": "deployment",
                "roles": ["web"],
                "script": None,
                "package": {"id": package_id, "feed": "builtin", "acquisition": "push"},
                "timeoutSeconds": 3600,
            },
            {
                "name": "Smoke",
                "phase": "deployment",
                "roles": ["web"],
                "script": {"syntax": "bash", "body": "echo smoke $Greeting"},
                "package": None,
                "timeoutSeconds": 3600,
            },
        ],
        "runbooks": {},
        "variables": [
            {
                "name": "Greeting",
                "value": "hello",
                "environments": [],
                "roles": [],
                "machines": [],
                "sensitive": False,
            },
            {
                "name": "Password",
                "value": "s3cret",
                "environments": ["Dev"],
                "roles": [],
                "machines": [],
                "sensitive": True,
            },
        ],
        "channels": [
            {
                "name": "Stable",
                "rules": [{"packages": [package_id], "versionRange": "[1.0,2.0)", "preReleaseTag": "^$"}],
            }
        ],
        "versionTemplate": None,
    }


def _package_ref(package_id: str, version: str) -> dict[str, Any]:
    return {
        "id": package_id,
        "version": version,
        "sha512": SHA,
        "size": 1000,
        "fileName": f"{package_id}.{version}.zip",
    }


def _machine_row(n: int) -> tuple[Any, ...]:
    thumb = f"{n:064x}"
    return (
        "Default",
        f"web-{n:02d}",
        thumb,
        "-",
        "polling",
        None,
        '["Dev"]',
        '["web"]',
        time.time(),
        None,
        "[]",
        '["Region/EU", "Region/US"]' if n % 2 else "[]",
        "both" if n % 2 else "untenanted",
    )


def populate(db_path: Path, projects: int, releases: int, tasks: int) -> None:
    """Write the large database in one transaction."""
    now = time.time()

    def insert(conn: sqlite3.Connection) -> None:
        versions = [f"1.{v}.0" for v in range(PACKAGE_VERSIONS - 2)] + ["2.0.0-beta", "2.0.0"]
        conn.executemany(
            "INSERT INTO packages (lower_id, version, id, sha512, size, file_name, created_at, full_version,"
            " catalog, prerelease, semver2) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, 0)",
            [
                (
                    f"bench.app{i:02d}",
                    v,
                    f"Bench.App{i:02d}",
                    SHA,
                    1000,
                    f"Bench.App{i:02d}.{v}.zip",
                    now,
                    v,
                    int("-" in v),
                )
                for i in range(PACKAGE_IDS)
                for v in versions
            ],
        )
        docs = [process(n) for n in range(projects)]
        conn.executemany(
            "INSERT INTO projects (space, name, document, updated_at) VALUES ('Default', ?, ?, ?)",
            [(doc["name"], json.dumps(doc), now) for doc in docs],
        )
        per_project = releases // projects
        conn.executemany(
            "INSERT INTO releases (space, project, version, process, packages, created_at, channel)"
            " VALUES ('Default', ?, ?, ?, ?, ?, 'Default')",
            [
                (
                    doc["name"],
                    f"0.{r}.0",
                    json.dumps(doc),
                    json.dumps(
                        {
                            doc["steps"][0]["package"]["id"]: _package_ref(
                                doc["steps"][0]["package"]["id"], "1.0.0"
                            )
                        }
                    ),
                    now - 86400 + r,
                )
                for doc in docs
                for r in range(per_project)
            ],
        )
        conn.executemany(
            "INSERT INTO machines (space, name, thumbprint, certificate, mode, endpoint, environments, roles,"
            " registered_at, last_seen, tenants, tenant_tags, tenanted_deployment)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_machine_row(n) for n in range(MACHINES)],
        )
        _tenants(conn, projects, now)
        _tasks(conn, docs, tasks, now)

    db = Database(db_path)
    try:
        db.sync(insert)
    finally:
        db.close()


def _tenants(conn: sqlite3.Connection, projects: int, now: float) -> None:
    conn.execute(
        "INSERT INTO tag_sets (space, name, tags, updated_at) VALUES ('Default', 'Region', ?, ?)",
        ('["EU", "US"]', now),
    )
    for t in range(TENANTS):
        name, tag = f"Tenant{t:03d}", "Region/EU" if t % 2 else "Region/US"
        linked = [f"Project{(t * 10 + k) % projects:04d}" for k in range(10)]
        doc = {
            "name": name,
            "tags": [tag],
            "projects": {p: ["Dev"] for p in linked},
            "variables": [{"name": "Greeting", "value": f"hi {name}"}],
        }
        conn.execute(
            "INSERT INTO tenants (space, name, document, updated_at) VALUES ('Default', ?, ?, ?)",
            (name, json.dumps(doc), now),
        )
        conn.executemany(
            "INSERT INTO tenant_projects VALUES ('Default', ?, ?, 'Dev')", [(name, p) for p in linked]
        )
        conn.execute("INSERT INTO tenant_tags VALUES ('Default', ?, ?)", (name, tag))


def _tasks(conn: sqlite3.Connection, docs: list[dict[str, Any]], count: int, now: float) -> None:
    plan = Plan(
        task_id="T-000000000000",
        kind="deployment",
        project_name="Project0000",
        release_version="0.0.0",
        environment_name="Dev",
        machine_name="web-00",
    )
    coordinator = json.dumps(TaskCoordinator(plan.task_id, {"web-00": plan}).snapshot())
    plans = json.dumps({"web-00": plan.to_json()})
    rows = (
        (
            f"T-{n:012x}",
            "Default",
            "deployment",
            docs[n % len(docs)]["name"],
            "0.0.0",
            None,
            "Dev",
            "success",
            None,
            now - 86400 + n * 0.01,
            now - 86400 + n * 0.01 + 5,
            plans,
            coordinator,
        )
        for n in range(count)
    )
    conn.executemany(
        "INSERT INTO tasks (task_id, space, kind, project, release_version, runbook, environment, state,"
        " error, created_at, finished_at, plans, coordinator) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


class Requests:
    """Makes request bodies: new release versions, existing releases, tenants."""

    def __init__(self, projects: int, releases: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.projects, self.per_project = projects, releases // projects
        self.made = 0

    def release(self) -> tuple[str, dict[str, Any]]:
        self.made += 1
        body = {
            "projectName": f"Project{self.rng.randrange(self.projects):04d}",
            "releaseVersion": f"9.{self.made}.{self.rng.randrange(1 << 30)}",
            "channelName": "Stable",
        }
        return "/api/Default/releases/create/v1", body

    def deployment(self) -> tuple[str, dict[str, Any]]:
        body = {
            "projectName": f"Project{self.rng.randrange(self.projects):04d}",
            "releaseVersion": f"0.{self.rng.randrange(self.per_project)}.0",
            "environmentNames": ["Dev"],
        }
        return "/api/Default/deployments/create/untenanted/v1", body

    def tenanted(self) -> tuple[str, dict[str, Any]]:
        tenant = self.rng.randrange(TENANTS)
        project = (tenant * 10 + self.rng.randrange(10)) % self.projects
        body = {
            "projectName": f"Project{project:04d}",
            "releaseVersion": f"0.{self.rng.randrange(self.per_project)}.0",
            "environmentName": "Dev",
            "tenantNames": [f"Tenant{tenant:03d}"],
        }
        return "/api/Default/deployments/create/tenanted/v1", body


def _context(server: Server) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.home / server_config.CA_CERT))
    ctx.check_hostname = False
    return ctx


async def _post(
    session: aiohttp.ClientSession, server: Server, ctx: ssl.SSLContext, req: tuple[str, Any]
) -> float:
    path, body = req
    start = time.perf_counter()
    async with session.post(server.url + path, json=body, ssl=ctx) as answer:
        text = await answer.read()
        if answer.status != 201:
            raise RuntimeError(f"POST {path} {body}: {answer.status} {text[:300]!r}")
    return time.perf_counter() - start


def _session(server: Server) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), headers={"X-Api-Key": server.admin_key()}
    )


async def latencies(server: Server, requests: Requests, count: int) -> dict[str, dict[str, float]]:
    """p50 and p95 (ms) of each kind of create, one at a time on one connection."""
    ctx, found = _context(server), {}
    async with _session(server) as session:
        for name, make in (
            ("release", requests.release),
            ("deployment", requests.deployment),
            ("tenanted", requests.tenanted),
        ):
            timed = [await _post(session, server, ctx, make()) for _ in range(count + 50)]
            cuts = statistics.quantiles([s * 1000 for s in timed[50:]], n=100)
            found[name] = {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2)}
    return found


async def throughput(server: Server, requests: Requests, total: int, clients: int = 20) -> float:
    """Creations per second with `clients` concurrent connections, half releases, half deployments."""
    ctx = _context(server)
    work = [requests.release() if n % 2 else requests.deployment() for n in range(total)]
    sessions = [_session(server) for _ in range(clients)]

    async def client(session: aiohttp.ClientSession) -> None:
        while work:
            await _post(session, server, ctx, work.pop())

    try:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for session in sessions))
        return total / (time.perf_counter() - start)
    finally:
        await asyncio.gather(*(session.close() for session in sessions))


def main(quick: bool) -> dict[str, Any]:
    """Run the benchmark, print a table, return the JSON figures."""
    projects, releases, tasks = (100, 10_000, 20_000) if quick else (1_000, 100_000, 200_000)
    count, total = (200, 400) if quick else (500, 1_000)
    with tempfile.TemporaryDirectory(prefix="bench-create-") as tmp:
        server = Server(Path(tmp) / "server")
        server.init()
        started = time.perf_counter()
        populate(
            resolve("server-shim", str(server.home)).state / server_config.DATABASE_FILE,
            projects,
            releases,
            tasks,
        )
        populated = time.perf_counter() - started
        server.start()
        try:
            requests = Requests(projects, releases, 7)
            latency = asyncio.run(latencies(server, requests, count))
            rate = asyncio.run(throughput(server, requests, total))
        finally:
            server.stop()
    print(
        f"create: {projects} projects, {TENANTS} tenants, {releases} releases, {tasks} tasks"
        f" ({populated:.1f} s to write); {count} requests of each kind"
    )
    for name, ms in latency.items():
        print(f"  create {name:<11} p50 {ms['p50']:6.2f} ms  p95 {ms['p95']:6.2f} ms")
    print(f"  {total} creations by 20 concurrent clients: {rate:.0f}/s (target >= {TARGET_RATE:.0f})")
    worst = max(ms["p95"] for ms in latency.values())
    return {
        "benchmark": "create",
        "figures": {
            "projects": projects,
            "tenants": TENANTS,
            "releases": releases,
            "tasks": tasks,
            "release_ms": latency["release"],
            "deployment_ms": latency["deployment"],
            "tenanted_ms": latency["tenanted"],
            "creates_per_s": round(rate, 1),
        },
        "target": f"p95 <= {TARGET_MS} ms; >= {TARGET_RATE:.0f} creations/s with 20 clients",
        "met": worst <= TARGET_MS and rate >= TARGET_RATE,
    }
