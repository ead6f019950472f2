"""Hostile input: every route of the server, and the parsers behind the wire.

The routes are read from the applications the `Server` class builds (the API site and
the polling site), so a route added later is covered without touching this file. On
every route, whatever is sent (wrong types, huge fields, deep nesting, lone
surrogates, invalid UTF-8, random bytes, mutated valid bodies, odd path parameters):
never a 5xx, never a Python traceback in a response, and every 4xx is a JSON error
body with ``error.code`` and ``error.message``. Oversized uploads are refused before
they are read whole. The parsers (`messages.decode`, `Plan.from_json`,
`parse_process`, the NuGet version rules) raise only their own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from server_shim import server_config
from server_shim.api import polling_site as polling
from server_shim.app import POLL_HEARTBEAT, Server
from server_shim.cli import main as server_cli
from server_shim.store import feed_store as feed
from tentacle.agent import agent_config as config
from tentacle.agent import registration
from tentacle.common.paths import InstancePaths, resolve
from tentacle.net import pki
from tentacle.protocol import messages
from tentacle.protocol.messages import MessageError
from tentacle.protocol.nuget_ranges import VersionRange
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion
from tentacle.protocol.plan import Plan, PlanError
from tentacle.protocol.process import ProcessError, parse_process
from tests import hostile
from tests.conftest import LiveServer, init_argv, start_server, stop_server, tentacle_context
from tests.feed_helpers import make_nupkg

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the tests share one server
MiB = 1024 * 1024


# --- the routes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One route of one site: a method and a path template with ``{parameters}``."""

    site: str  # "api" or "polling"
    method: str
    template: str

    @property
    def params(self) -> list[str]:
        """The names of the path parameters."""
        return re.findall(r"{(\w+)}", self.template)

    def path(self, values: dict[str, str]) -> str:
        """The path with each parameter replaced by its (already percent-encoded) value."""
        return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], self.template)

    def __str__(self) -> str:
        return f"{self.site}:{self.method} {self.template}"


def _routes() -> list[Route]:
    """Every route of the applications a `Server` builds, from a throwaway instance."""
    with tempfile.TemporaryDirectory() as home, contextlib.redirect_stdout(None):
        server_cli.main(
            ["--home", home, "init", "--listen", "127.0.0.1:0", "--polling-listen", "127.0.0.1:0"]
        )
        paths = resolve("server-shim", home)
        server = Server(paths, server_config.load(paths))
        api_app = server.api_app()
        sites = {"api": api_app, "polling": polling.make_app(api_app, POLL_HEARTBEAT)}
        found = [
            Route(site, route.method, route.resource.canonical)
            for site, app in sites.items()
            for route in app.router.routes()
            if route.resource is not None
        ]
        server.db.close()
    return found


ROUTES = _routes()
ROUTE_IDS = [str(route) for route in ROUTES]
VALID_TEMPLATES = (  # the routes that take a body; `_valid_bodies` holds one each accepts
    "/api/machines/register/v1",
    "/api/machines/listening-port/v1",
    "/api/{space}/projects/{name}/v1",
    "/api/{space}/releases/create/v1",
    "/api/{space}/deployments/create/untenanted/v1",
    "/api/{space}/runbook-runs/create/v1",
    "/api/{space}/machines/{name}/replace/v1",
    "/api/{space}/reactions/{name}/v1",
    "/api/{space}/hooks/{name}/v1",
)


# --- a server with something in it --------------------------------------------------------------


@dataclass
class Target:
    """A live server with a project, a release, a task, a package and a registered machine."""

    live: LiveServer
    session: aiohttp.ClientSession
    ctx: Any  # ssl.SSLContext presenting a registered tentacle's certificate
    known: dict[str, list[str]]  # path parameter -> values that name something real
    valid: dict[str, dict[str, Any]]  # route template -> a body the route accepts

    def url(self, route: Route, path: str) -> URL:
        """The full, already encoded URL of `path` on the route's site."""
        port = self.live.server.bound.api if route.site == "api" else self.live.server.bound.polling
        return URL(f"https://127.0.0.1:{port}{path}", encoded=True)

    async def send(
        self, route: Route, path: str, body: bytes | Any, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        """One request; returns (status, content type, raw body)."""
        async with self.session.request(
            route.method, self.url(route, path), data=body, headers=headers, ssl=self.ctx
        ) as resp:
            return resp.status, resp.content_type, await resp.read()


def assert_well_behaved(method: str, status: int, content_type: str, raw: bytes) -> None:
    """No 5xx, no traceback, and a JSON error body on every 4xx."""
    text = raw.decode("utf-8", "replace")
    assert status < 500, (status, text[:500])
    assert "Traceback" not in text and 'File "/' not in text, text[:500]
    if 400 <= status < 500 and method != "HEAD":
        assert content_type == "application/json", (status, content_type, text[:200])
        error = json.loads(raw)["error"]
        assert isinstance(error["code"], str) and error["code"], text[:200]
        assert isinstance(error["message"], str) and error["message"], text[:200]


async def _register(live: LiveServer, root: Path) -> InstancePaths:
    """A polling machine web-01, registered (it need not run)."""
    machine = resolve("tentacle", str(root / "web-01"))
    reg = registration.Registration(
        server=live.url,
        token=live.token(),
        server_thumbprint=live.thumbprint,
        name="web-01",
        environments=("Dev",),
        roles=("web",),
        listen=None,
    )
    await registration.register(machine, reg)
    return machine


SCRIPT = {"name": "S", "roles": ["web"], "script": {"syntax": "bash", "body": "true"}}
PROCESS = {"name": "Shop", "steps": [SCRIPT], "runbooks": {"Restart": {"steps": [SCRIPT]}}}
DEPLOYMENT = {"projectName": "Shop", "releaseVersion": "1.0.0", "environmentNames": ["Dev"]}
RELEASE_KEYS = ("projectName", "releaseVersion")


async def _populate(
    live: LiveServer, root: Path
) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]], InstancePaths]:
    """A machine, a project, a release, a deployment and a package; what names them, valid bodies."""
    machine = await _register(live, root)
    await _ok(live, "PUT", "/api/Default/projects/Shop/v1", PROCESS)
    await _ok(
        live, "POST", "/api/Default/releases/create/v1", {"projectName": "Shop", "releaseVersion": "1.0.0"}
    )
    created = await _ok(live, "POST", "/api/Default/deployments/create/untenanted/v1", DEPLOYMENT)
    for package_id in ("Hostile.Pkg", "Hostile.Del"):  # the delete route takes the second, once
        package = make_nupkg(root / f"{package_id}.1.0.0.nupkg", package_id, "1.0.0")
        await asyncio.to_thread(feed.push, live.server.db, feed.store_dir(live.paths.state), package)
    known = {
        "space": ["Default"],
        "name": ["Shop", "web-01"],
        "taskId": [str(created["taskId"])],
        "lowerid": ["hostile.pkg"],
        "lowerversion": ["1.0.0"],
        "filename": ["hostile.pkg.1.0.0.nupkg"],
        "id": ["Hostile.Del"],
        "version": ["1.0.0"],
        "lower": ["1.0.0"],
        "upper": ["1.0.0"],
    }
    return known, _valid_bodies(live, machine), machine


def _valid_bodies(live: LiveServer, machine: InstancePaths) -> dict[str, dict[str, Any]]:
    """A body each body-taking route accepts."""
    key = pki.load_key(config.file(machine, config.KEY_FILE))
    return {
        "/api/machines/register/v1": {
            "token": live.token(uses=100_000),
            "csr": pki.build_csr(key, "web-09").decode(),
            "name": "web-09",
            "environments": ["Dev"],
            "roles": ["web"],
            "mode": "polling",
            "endpoint": None,
            "force": True,
        },
        "/api/machines/listening-port/v1": {"port": 10933},  # web-01 polls: a 409, after parsing
        "/api/{space}/projects/{name}/v1": PROCESS,
        "/api/{space}/releases/create/v1": {
            "projectName": "Shop",
            "releaseVersion": "2.0.0",
            "packageVersions": {},
        },
        "/api/{space}/deployments/create/untenanted/v1": {**DEPLOYMENT, "machineNames": ["web-01"]},
        "/api/{space}/runbook-runs/create/v1": {
            "projectName": "Shop",
            "runbookName": "Restart",
            "environmentNames": ["Dev"],
        },
        "/api/{space}/machines/{name}/replace/v1": {"expires": "30m"},
        "/api/{space}/reactions/{name}/v1": {  # to a reserved address: refused, never sent
            "trigger": {"events": ["releaseCreated"], "environments": ["Dev"]},
            "action": {
                "http": {
                    "url": "https://192.0.2.1/#{Project.Name}",
                    "headers": {"X-Release": "#{Release.Version}"},
                    "body": {"text": "#{Project.Name}"},
                    "secret": "s3cret",
                }
            },
        },
        "/api/{space}/hooks/{name}/v1": {"ref": "main", "commits": [{"id": "abc"}]},
    }


async def _ok(live: LiveServer, method: str, path: str, body: Any) -> Any:
    status, answer = await live.api(method, path, body)
    assert status < 300, answer
    return answer


@pytest.fixture(scope="module")
def server_root(tmp_path_factory: pytest.TempPathFactory, module_database_url: str) -> InstancePaths:
    """An initialised server instance shared by this module's tests."""
    home = tmp_path_factory.mktemp("hostile") / "server"
    assert server_cli.main(init_argv(home, module_database_url)) == 0
    return resolve("server-shim", str(home))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def target(server_root: InstancePaths) -> AsyncIterator[Target]:
    """The populated server and a client that presents a registered tentacle's certificate."""
    live = await start_server(server_root)
    try:
        known, valid, machine = await _populate(live, server_root.config.parent / "tentacles")
        ctx = tentacle_context(machine)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as session:
            yield Target(live, session, ctx, known, valid)
    finally:
        await stop_server(live)


def _headers(live: LiveServer, key: str | None = "admin") -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Api-Key"] = live.admin_key if key == "admin" else key
    return headers


def _known_path(target: Target, route: Route) -> str:
    return route.path({name: target.known[name][0] for name in route.params})


def _body_routes() -> Iterator[Route]:
    return (r for r in ROUTES if r.method in ("POST", "PUT", "PATCH", "DELETE"))


# --- the categories, one by one, on every route ----------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("case", sorted(hostile.FIXED_BODIES))
@in_module_loop
async def test_each_hostile_body_on_every_route(target: Target, route: Route, case: str) -> None:
    """Wrong types, deep nesting, lone surrogates, invalid UTF-8 and junk: a clean 4xx or a success."""
    body = hostile.FIXED_BODIES[case]
    answer = await target.send(route, _known_path(target, route), body, _headers(target.live))
    assert_well_behaved(route.method, *answer)


@pytest.mark.parametrize("route", [r for r in ROUTES if r.template in VALID_TEMPLATES], ids=str)
@in_module_loop
async def test_huge_and_mistyped_fields_of_valid_bodies(target: Target, route: Route) -> None:
    """Each field of a valid body in turn: huge, of every wrong type, a lone surrogate, deeply nested."""
    valid = target.valid[route.template]
    for body in hostile.field_variants(valid):
        answer = await target.send(route, _known_path(target, route), body, _headers(target.live))
        assert_well_behaved(route.method, *answer)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@in_module_loop
async def test_odd_path_parameters_on_every_route(target: Target, route: Route) -> None:
    """Surrogates, invalid UTF-8, dots, huge and empty values in every path parameter."""
    for name in route.params:
        for value in hostile.ODD_SEGMENTS:
            values = {p: target.known[p][0] for p in route.params} | {name: value}
            answer = await target.send(route, route.path(values), b"{}", _headers(target.live))
            assert_well_behaved(route.method, *answer)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@in_module_loop
async def test_odd_query_strings_on_every_route(target: Target, route: Route) -> None:
    """Huge, negative, non-numeric, repeated and undecodable query values: still well behaved."""
    for query in hostile.ODD_QUERIES:
        answer = await target.send(route, _known_path(target, route) + query, b"{}", _headers(target.live))
        assert_well_behaved(route.method, *answer)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@in_module_loop
async def test_missing_or_wrong_api_key_is_a_json_error(target: Target, route: Route) -> None:
    """Without a valid key (or with a junk one), the answer is still well behaved."""
    for key in (None, "", "API-wrong", "\u00ff" * 300):
        answer = await target.send(route, _known_path(target, route), b"{}", _headers(target.live, key))
        assert_well_behaved(route.method, *answer)


# --- oversized uploads ----------------------------------------------------------------------


@dataclass
class Upload:
    """A 100 MiB body that stops after `held_at` bytes until the server has answered."""

    size: int = 100 * MiB
    held_at: int = 8 * MiB
    sent: int = 0
    at_answer: int = -1

    def __post_init__(self) -> None:
        self.answered = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Spaces (valid JSON whitespace) until `held_at`; then nothing more once answered."""
        piece = b" " * (256 * 1024)
        while self.sent < self.size:
            if self.sent >= self.held_at:
                await self.answered.wait()
                return  # the answer came: the rest of the 100 MiB is never needed
            self.sent += len(piece)
            yield piece


async def _upload(target: Target, route: Route, declared: bool) -> tuple[int, dict[str, Any], Upload]:
    upload = Upload()
    headers = _headers(target.live)
    if declared:
        headers["Content-Length"] = str(upload.size)
    timeout = aiohttp.ClientTimeout(total=20)
    url = target.url(route, _known_path(target, route))
    # Its own connection, closed after the answer: the server is left no half-sent body to wait for.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.request(
            route.method, url, data=upload.chunks(), headers=headers, ssl=target.ctx, timeout=timeout
        ) as resp,
    ):
        upload.at_answer = upload.sent
        connection = resp.connection
        answer = await resp.json(content_type=None)
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
        upload.answered.set()
        return resp.status, answer, upload


async def _reads_its_body(target: Target, route: Route) -> bool:
    """A route reads its body when an empty one is refused as bad JSON."""
    status, _, raw = await target.send(route, _known_path(target, route), b"", _headers(target.live))
    return status == 400 and json.loads(raw)["error"]["code"] == "bad-json"


@pytest.mark.parametrize("route", list(_body_routes()), ids=str)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@in_module_loop
async def test_oversized_upload_is_refused_before_it_is_read_whole(
    target: Target, route: Route, declared: bool
) -> None:
    """100 MiB, declared or chunked: the answer (413 where the body is read) comes before 8 MiB were sent."""
    reads = await _reads_its_body(target, route)
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, body, upload = await _upload(target, route, declared)
    assert loop.time() - began < 5
    assert 0 <= upload.at_answer <= upload.held_at < upload.size
    if reads:
        assert status == 413 and body["error"]["code"] == "too-large", body
    else:
        assert status < 500 and (status < 400 or "error" in body), body


# --- a generator over the whole API (an equivalent of schemathesis) ----------------------------


@in_module_loop
@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_generated_requests_are_well_behaved(target: Target, route: Route, data: st.DataObject) -> None:
    """Random and mutated bodies, path parameters, queries and keys: never a 5xx or a traceback."""
    values = {name: data.draw(hostile.segments(target.known[name]), label=name) for name in route.params}
    path = route.path(values) + data.draw(hostile.QUERIES, label="query")
    body = data.draw(hostile.bodies(target.valid.get(route.template)), label="body")
    key = data.draw(st.sampled_from(["admin", "admin", "admin", None, "API-nope"]), label="key")
    answer = await target.send(route, path, body, _headers(target.live, key))
    assert_well_behaved(route.method, *answer)


# --- the parsers ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(hostile.JSON_TEXTS, st.binary(max_size=200), hostile.message_shaped()))
def test_message_decode_raises_only_message_error(raw: str | bytes) -> None:
    """messages.decode gives a request or response, or raises MessageError: nothing else."""
    try:
        message = messages.decode(raw)
    except MessageError:
        return
    assert messages.decode(messages.encode(message)) == message


@pytest.mark.parametrize("raw", hostile.NESTED_TEXTS, ids=["arrays", "objects", "mixed"])
def test_message_decode_refuses_deep_nesting(raw: str) -> None:
    """A message nested far deeper than any real one is a MessageError, not a RecursionError."""
    with pytest.raises(MessageError):
        messages.decode(raw)


@settings(max_examples=300, deadline=None)
@given(hostile.json_documents(hostile.PLAN_KEYS))
def test_plan_from_json_raises_only_plan_error(obj: object) -> None:
    """Plan.from_json, over hostile JSON documents, gives a plan or raises PlanError."""
    try:
        plan = Plan.from_json(obj)
    except PlanError:
        return
    assert Plan.from_json(plan.to_json()) == plan


@settings(max_examples=300, deadline=None)
@given(hostile.json_documents(hostile.PROCESS_KEYS))
def test_parse_process_raises_only_process_error(obj: object) -> None:
    """parse_process, over hostile JSON documents, gives a process or raises ProcessError."""
    try:
        process = parse_process(obj)
    except ProcessError:
        return
    assert parse_process(process.to_json()) == process


@settings(max_examples=500, deadline=None)
@given(hostile.VERSION_TEXTS)
def test_nuget_parsers_raise_only_invalid_version(text: str) -> None:
    """NuGetVersion.parse, parse_strict and VersionRange.parse raise only the InvalidVersion family."""
    for parse in (NuGetVersion.parse, NuGetVersion.parse_strict, VersionRange.parse):
        with contextlib.suppress(InvalidVersion):
            parse(text)
