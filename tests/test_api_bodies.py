"""Typed API bodies: each route refuses a misfit body with a 400 that names the path.

Bodies are sent as raw bytes to a live server (real TLS on 127.0.0.1), so they can
hold what a JSON library would not write: lone surrogate escapes and nesting ten
thousand levels deep. Refusals come before anything is looked up, so the bodies need
no real token, project or release.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from server_shim.api.bodies import ErrorBody, ErrorDetail
from server_shim.api.middleware import answer
from server_shim.cli import main as server_cli
from tentacle.common.paths import resolve
from tentacle.net.tls import client_context
from tests.conftest import LiveServer, init_argv, start_server, stop_server

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the tests share one server

REGISTER = "/api/machines/register/v1"
PROJECT = "/api/Default/projects/Shop/v1"
RELEASE = "/api/Default/releases/create/v1"
DEPLOY = "/api/Default/deployments/create/untenanted/v1"
RUNBOOK = "/api/Default/runbook-runs/create/v1"
BODY_ROUTES = [("POST", REGISTER), ("PUT", PROJECT), ("POST", RELEASE), ("POST", DEPLOY), ("POST", RUNBOOK)]

MACHINE = {
    "token": "TOK-never-looked-at",
    "csr": "never parsed",
    "name": "web-01",
    "mode": "polling",
    "environments": ["Dev"],
    "roles": ["web"],
}
DEPLOYMENT = {"projectName": "Shop", "releaseVersion": "1.0.0", "environmentNames": ["Dev"]}
RUN = {"projectName": "Shop", "runbookName": "Restart", "environmentNames": ["Dev"]}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory, module_database_url: str
) -> AsyncIterator[LiveServer]:
    """One initialised, running server for the module."""
    home = tmp_path_factory.mktemp("bodies") / "server"
    assert server_cli.main(init_argv(home, module_database_url)) == 0
    server = await start_server(resolve("server-shim", str(home)))
    try:
        yield server
    finally:
        await stop_server(server)


async def send(live: LiveServer, method: str, path: str, raw: bytes) -> tuple[int, str, dict[str, Any]]:
    """One request with exactly these body bytes; (status, content type, JSON answer)."""
    ctx = client_context(Path(live.paths.config) / "ca.pem")
    headers = {"X-Api-Key": live.admin_key, "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, live.url + path, data=raw, headers=headers, ssl=ctx) as resp,
    ):
        return resp.status, resp.content_type, await resp.json(content_type=None)


def with_(body: dict[str, Any], **changes: Any) -> bytes:
    """``body`` with fields changed (a value of ``...`` removes the field), as JSON bytes."""
    changed = {**body, **changes}
    return json.dumps({k: v for k, v in changed.items() if v is not ...}).encode()


REFUSALS = [
    # registration
    (
        REGISTER,
        with_(MACHINE, environments=["Dev", 5]),
        "environments[1]",
        "expected a string, got an integer",
    ),
    (REGISTER, with_(MACHINE, roles=[]), "roles", "expected a list of length >= 1"),
    (REGISTER, with_(MACHINE, token=...), "token", "required"),
    (REGISTER, with_(MACHINE, colour="blue"), "colour", "unknown field"),
    (REGISTER, with_(MACHINE, mode="sometimes"), "mode", "invalid enum value 'sometimes'"),
    (REGISTER, with_(MACHINE, force="yes"), "force", "expected true or false, got a string"),
    (REGISTER, with_(MACHINE, name="web 01"), "name", "name 'web 01': must be 1-100 letters"),
    (REGISTER, with_(MACHINE, roles=["web", "db/x"]), "roles[1]", "role 'db/x': must be 1-100 letters"),
    (REGISTER, with_(MACHINE, mode="listening"), "endpoint", "required for a listening machine"),
    (
        REGISTER,
        with_(MACHINE, mode="listening", endpoint="http://x:1"),
        "endpoint",
        "must be an https:// URL",
    ),
    # releases
    (RELEASE, b'{"projectName": "Shop", "releaseVersion": 1}', "releaseVersion", "expected a string, got"),
    (RELEASE, b'{"projectName": "Shop", "channelName": 5}', "channelName", "expected a string, got"),
    (
        RELEASE,
        b'{"projectName": "Shop", "releaseVersion": "1.0.0", "packageVersions": {"A": "1", "B": []}}',
        "packageVersions[...]",
        "expected a string, got a list",
    ),
    # deployments
    (DEPLOY, with_(DEPLOYMENT, environmentNames=["Dev", 5]), "environmentNames[1]", "expected a string, got"),
    (DEPLOY, with_(DEPLOYMENT, environmentNames=[]), "environmentNames", "expected a list of length >= 1"),
    (DEPLOY, with_(DEPLOYMENT, machineNames="web-01"), "machineNames", "expected a list, got a string"),
    (
        DEPLOY,
        with_(DEPLOYMENT, machineNames=["web-01", ""]),
        "machineNames[1]",
        "expected a string of length >= 1",
    ),
    (
        DEPLOY,
        with_(DEPLOYMENT, machineNames=["a\x00b"]),
        "machineNames[0]",
        "must not contain NUL characters",
    ),
    (DEPLOY, with_(DEPLOYMENT, machinenames=["web-01"]), "machinenames", "unknown field"),
    (DEPLOY, with_(DEPLOYMENT, runbookName="Restart"), "runbookName", "unknown field"),
    (
        DEPLOY,
        with_(DEPLOYMENT, releaseVersion="9" * 201),
        "releaseVersion",
        "expected a string of length <= 200",
    ),
    # runbook runs
    (RUNBOOK, with_(RUN, runbookName=...), "runbookName", "required"),
    (RUNBOOK, with_(RUN, runbookName=None), "runbookName", "expected a string, got null"),
    (RUNBOOK, with_(RUN, environmentNames=[["Dev"]]), "environmentNames[0]", "expected a string, got a list"),
    (RUNBOOK, with_(RUN, releaseVersion="1.0.0"), "releaseVersion", "unknown field"),
    (RUNBOOK, with_(RUN, machineNames=["x"] * 1001), "machineNames", "expected a list of length <= 1000"),
    # the process document: its own rules are parse_process's; reading it is ours
    (PROJECT, b'{"name": "Shop", "steps": [], "x": {"a\\u0000": 1}}', "x", "a key must not contain NUL"),
]


@pytest.mark.parametrize(("path", "raw", "where", "problem"), REFUSALS)
@in_module_loop
async def test_a_misfit_body_is_a_400_naming_its_path(
    live: LiveServer, path: str, raw: bytes, where: str, problem: str
) -> None:
    """Misfit fields (wrong type, missing, unknown, out of bounds): a JSON 400 naming the path."""
    method = "PUT" if path == PROJECT else "POST"
    status, content_type, body = await send(live, method, path, raw)
    assert (status, content_type) == (400, "application/json"), body
    assert body["error"]["message"].startswith(f"{where}: {problem}"), body
    assert body["error"]["details"]["path"] == where


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize(
    "raw",
    [b'{"a":' * 10_000 + b"1" + b"}" * 10_000, b"[" * 10_000 + b"]" * 10_000, b'{"name": ' + b"[" * 10_000],
    ids=["objects", "lists", "unclosed"],
)
@in_module_loop
async def test_ten_thousand_levels_of_nesting_are_a_400(
    live: LiveServer, method: str, path: str, raw: bytes
) -> None:
    """Nesting far past any limit is refused as a 400 JSON error, never a 500."""
    status, content_type, body = await send(live, method, path, raw)
    assert (status, content_type) == (400, "application/json"), body
    assert body["error"]["code"] in ("bad-json", "invalid"), body


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@in_module_loop
async def test_nesting_past_64_levels_is_refused_by_path(live: LiveServer, method: str, path: str) -> None:
    """Where a body may hold free-form JSON (the process document), 65 levels are a bad-json 400."""
    raw = b'{"name": "Shop", "steps": ' + b"[" * 70 + b"]" * 70 + b"}"
    status, _, body = await send(live, method, path, raw)
    assert status == 400, body
    if path == PROJECT:
        assert body["error"]["code"] == "bad-json"
        assert body["error"]["message"].endswith("nests deeper than 64 levels"), body


TEXT_FIELD = {
    REGISTER: "name",
    PROJECT: "name",
    RELEASE: "projectName",
    DEPLOY: "projectName",
    RUNBOOK: "projectName",
}


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize(
    ("template", "escape"),
    [
        ('{"FIELD": "\\ud800"}', "\\ud800"),
        ('{"FIELD": "x\\udfffy"}', "\\udfff"),
        ('{"\\udbff": 1, "FIELD": "x"}', "\\udbff"),
        ('{"FIELD": "\\ud83d\\ude00\\ude00"}', "\\ude00"),
    ],
    ids=["high", "low", "key", "after-a-pair"],
)
@in_module_loop
async def test_a_lone_surrogate_escape_is_a_400_naming_it(
    live: LiveServer, method: str, path: str, template: str, escape: str
) -> None:
    """A JSON escape of half a surrogate pair is refused (bad-json) with the escape and where it is."""
    raw = template.replace("FIELD", TEXT_FIELD[path]).encode()
    status, _, body = await send(live, method, path, raw)
    assert status == 400, body
    assert body["error"]["code"] == "bad-json"
    at = raw.rfind(escape.encode())
    assert f"{escape} at byte {at} is half a surrogate pair" in body["error"]["message"]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b'"x"', b"{", b'{"a": 1} {}', b"\xff\xfe"])
@in_module_loop
async def test_what_is_not_one_json_object_is_bad_json(
    live: LiveServer, method: str, path: str, raw: bytes
) -> None:
    """Empty, non-object, truncated, trailing junk, non-UTF-8: a JSON 400 (bad-json, or a named field)."""
    status, content_type, body = await send(live, method, path, raw)
    assert (status, content_type) == (400, "application/json"), body
    if raw != b'{"a": 1} {}':  # its unknown field "a" may be named first
        assert body["error"]["code"] == "bad-json", body


@in_module_loop
async def test_a_valid_pair_passes_the_surrogate_check(live: LiveServer) -> None:
    """An escaped astral character (a surrogate pair) is text like any other: the body is accepted."""
    raw = with_(DEPLOYMENT, machineNames=["\U0001f600"])
    status, _, body = await send(live, "POST", DEPLOY, raw)
    assert status == 404, body  # no such release: the body itself was accepted


def test_an_answer_with_a_lone_surrogate_is_sent_escaped() -> None:
    """An answer echoing a lone surrogate (no UTF-8 form) goes out escaped, not as a failure."""
    message = "no task '\ud800'"
    response = answer(
        ErrorBody(error=ErrorDetail(code="not-found", message=message), error_message=message), 404
    )
    assert response.status == 404 and response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    sent = json.loads(response.body)
    assert sent["error"]["message"] == sent["ErrorMessage"] == "no task '\\ud800'"
