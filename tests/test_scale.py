"""What keeps the server fast with thousands of tentacles and an idle tentacle small.

The scale benchmarks (``python -m bench dispatch|reconnect|idle``) measure these paths;
these tests pin the properties that make them fast, so that a change that loses one
fails here in seconds rather than in a benchmark run.
"""

from __future__ import annotations

import json
import os
import resource
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from server_shim.api.tls_site import READ_BUFFER, LeanTLSSite
from server_shim.app import raise_open_files_limit
from server_shim.dispatch.fleet import Fleet
from server_shim.store import machine_rows as machines
from server_shim.store import task_rows as tasks
from server_shim.store.database import Database
from tentacle.common.paths import InstancePaths
from tentacle.net.tls import client_context, server_context
from tentacle.protocol.coordinator import TaskCoordinator
from tentacle.protocol.plan import resolve_plan
from tentacle.protocol.process import parse_process

pytestmark = pytest.mark.timeout(60)


def _machine(name: str) -> machines.Machine:
    return machines.Machine(
        space="Default",
        name=name,
        thumbprint=name.encode().hex().ljust(64, "0"),
        certificate="-",
        mode="polling",
        endpoint=None,
        environments=("Dev",),
        roles=("web",),
        registered_at=time.time(),
    )


def test_machine_lookups_by_name_use_an_index(tmp_path: Path) -> None:
    """Finding a target by name and saving lastSeen by name do not scan the machines table."""
    db = Database(tmp_path / "server.db")
    try:
        for query in (
            "SELECT * FROM machines WHERE name = ?",
            "UPDATE machines SET last_seen = 1 WHERE name = ?",
        ):
            plan = db.sync(lambda conn, q=query: conn.execute(f"EXPLAIN QUERY PLAN {q}", ("x",)).fetchall())
            assert "USING INDEX machines_by_name" in " ".join(str(row[-1]) for row in plan), query
    finally:
        db.close()


async def test_fleet_caches_machines_until_they_are_forgotten(db_location: Path | str) -> None:
    """A target's record is read once; removal (`forget`) makes the next lookup see it is gone."""
    db = Database(db_location)
    fleet = Fleet(db, ssl.create_default_context())
    try:
        db.sync(lambda conn: machines.insert(conn, _machine("web-01"), force=False))
        first = await fleet.machine("web-01")
        db.sync(machines.revoke, "Default", "web-01")
        assert first is not None and await fleet.machine("web-01") == first  # served from memory
        await fleet.forget("web-01")
        assert await fleet.machine("web-01") is None
        assert await fleet.machine("nobody") is None
    finally:
        await fleet.close()
        db.close()


def test_reading_a_task_can_skip_its_plans(db_location: Path | str) -> None:
    """The API's reads get the task's header and snapshot without parsing every target's plan."""
    process = parse_process(
        {
            "name": "P",
            "steps": [{"name": "S", "roles": ["web"], "script": {"syntax": "bash", "body": "true"}}],
        }
    )
    plans = {
        name: resolve_plan(
            task_id="T-1",
            kind="deployment",
            steps=process.steps,
            variables=process.variables,
            project_name="P",
            release_version="1",
            environment="Dev",
            machine_name=name,
            machine_roles=("web",),
            packages={},
            feeds={},
        )
        for name in ("a", "b")
    }
    snapshot = TaskCoordinator("T-1", plans).snapshot()
    record = tasks.TaskRecord(
        task_id="T-1",
        space="Default",
        kind="deployment",
        project="P",
        release_version="1",
        runbook=None,
        environment="Dev",
        state="queued",
        error=None,
        created_at=1.0,
        finished_at=None,
        plans=plans,
        coordinator=snapshot,
    )
    db = Database(db_location)
    try:
        db.sync(tasks.insert, record)
        read = db.sync(lambda conn: tasks.get(conn, "T-1", with_plans=False))
        assert read.plans == {} and read.coordinator == snapshot
        assert (read.state, read.project, read.created_at) == ("queued", "P", 1.0)
        assert db.sync(tasks.get, "T-1").plans == plans
    finally:
        db.close()


@pytest.fixture
async def echo_site(server_home: InstancePaths) -> AsyncIterator[tuple[int, list[int]]]:
    """A LeanTLSSite echoing request bodies; yields its port and each connection's buffer size."""
    buffers: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        # The read buffer is asyncio-private; looking at it is the point of this test.
        protocol = request.transport._ssl_protocol  # type: ignore[union-attr]
        buffers.append(len(protocol._ssl_buffer))
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    conf = server_home.config
    ctx = server_context(conf / "server.pem", conf / "server.key", conf / "ca.pem", require=False)
    site = LeanTLSSite(runner, "127.0.0.1", 0, ctx)
    await site.start()
    yield site.port, buffers
    await runner.cleanup()


async def test_lean_tls_site_keeps_small_buffers_and_carries_large_bodies(
    echo_site: tuple[int, list[int]], server_home: InstancePaths
) -> None:
    """Each TLS connection holds a one-record read buffer, and a 4 MiB body still arrives whole."""
    port, buffers = echo_site
    body = bytes(range(256)) * (16 * 1024)
    ctx = client_context(server_home.config / "ca.pem")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"https://127.0.0.1:{port}/echo", data=body, ssl=ctx) as answer,
    ):
        assert answer.status == 200 and await answer.read() == body
    assert buffers == [READ_BUFFER]


def test_the_server_lifts_its_open_files_limit_to_the_hard_limit() -> None:
    """Thousands of polling tentacles need thousands of sockets: the soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, soft)
    code = "from server_shim.app import raise_open_files_limit as r; import resource; r(); " + (
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
    )
    expected = hard if hard != resource.RLIM_INFINITY else max(low, 1 << 20)
    assert int(done.stdout) == expected
    assert raise_open_files_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_tentacle_run_does_not_load_what_an_idle_tentacle_never_uses() -> None:
    """`tentacle run` imports no cryptography, HTTP server, archive, cache or download code."""
    heavy = [
        "cryptography",
        "platformdirs",
        "aiohttp.web",
        "tentacle.net.pki",
        "tentacle.agent.registration",
        "tentacle.agent.listening",
        "tentacle.packages.archives",
        "tentacle.packages.extraction",
        "tentacle.packages.cache",
        "tentacle.packages.partial",
        "tentacle.packages.pull",
        "tentacle.packages.download",
        "tentacle.packages.mirror_ranking",
        "tentacle.packages.mirror_client",
        "zstandard",
    ]
    code = "import sys, json, tentacle.agent.command_line, tentacle.agent.daemon; "
    code += f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_a_listening_tentacle_loads_the_package_cache_only_when_a_push_arrives() -> None:
    """The push receiver's routes are there from the start; the cache code comes with the first push."""
    code = "import sys, json, tentacle.agent.daemon, tentacle.agent.listening, tentacle.packages.receive; "
    cache = ["tentacle.packages.cache", "tentacle.packages.partial", "zstandard"]
    code += f"print(json.dumps([m for m in {cache!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


def test_a_tentacle_loads_frozenlist_without_its_cpp_extension_and_leaves_the_environment_alone() -> None:
    """frozenlist's C++ extension would keep libstdc++ resident; scripts must not inherit the switch."""
    code = "import os, json; from tentacle.agent.command_line import lean_frozenlist; lean_frozenlist(); "
    code += "import tentacle.agent.daemon, tentacle.agent.listening, frozenlist; print(json.dumps(["
    code += "frozenlist.FrozenList.__module__, 'FROZENLIST_NO_EXTENSIONS' in os.environ, "
    code += "any('libstdc++' in line for line in open('/proc/self/maps'))]))"
    env = {k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(done.stdout) == ["frozenlist", False, False]


def test_tentacle_run_loads_aiohttp_without_its_extensions_or_the_mime_table() -> None:
    """The daemon gets aiohttp's pure-Python parser and Python's MIME table; scripts never see the switch."""
    code = "import os, json, mimetypes; from tentacle.agent.command_line import lean_aiohttp; "
    code += "lean_aiohttp(); import tentacle.agent.daemon, tentacle.agent.listening; "
    code += "import aiohttp.http_parser as p; "
    code += "maps = open('/proc/self/maps').read(); print(json.dumps(["
    code += "p.HttpRequestParser is p.HttpRequestParserPy, 'AIOHTTP_NO_EXTENSIONS' in os.environ, "
    code += "'_http_parser' in maps, mimetypes.guess_type('a.deb')[0]]))"
    env = {k: v for k, v in os.environ.items() if k != "AIOHTTP_NO_EXTENSIONS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert json.loads(done.stdout) == [True, False, False, None]


def test_a_tentacle_gives_back_the_memory_its_start_freed() -> None:
    """On glibc, trimming works and leaves a process that still runs (the daemon trims once it is up)."""
    code = "import json; from tentacle.common import heap; blob = [bytes(1000) for _ in range(50_000)]; "
    code += "del blob; print(json.dumps(heap.trim()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) is True


def test_importing_the_project_changes_nothing_in_the_process() -> None:
    """No import-time side effects: the environment is the same after importing every module."""
    code = "import os, pkgutil, importlib, json, tentacle, server_shim; before = dict(os.environ); "
    code += "[importlib.import_module(m.name) for p in (tentacle, server_shim) "
    code += (
        "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.') if not m.name.endswith('__main__')]; "
    )
    code += "print(json.dumps(dict(os.environ) == before))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) is True
