"""The built-in feed's NuGet protocol over HTTPS: service index, publish, delete, registrations, search, auth.

Real server, real TLS, aiohttp as the client; the real NuGet clients' view of the same
routes is tests/test_nuget_clients.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server_shim import server_config
from server_shim.store import accounts
from server_shim.store import feed_store as feed
from tentacle.net.tls import client_context
from tests.conftest import LiveServer, start_server, stop_server
from tests.deploying import apply, release, step
from tests.feed_helpers import Answer, _context, get, make_zip, push_live
from tests.nuget_tools import make_package


def tls(live: LiveServer) -> Any:
    """A client context trusting the server's CA, without a client certificate."""
    return client_context(live.paths.config / server_config.CA_CERT)


def basic(key: str, user: str = "anyone") -> dict[str, str]:
    """HTTP Basic with the key as password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


async def put_package(
    live: LiveServer, data: bytes, headers: dict[str, str] | None = None, path: str = "/nuget/v3/package/"
) -> Answer:
    """PUT a package as `nuget push` does: multipart, first part the .nupkg."""
    form = aiohttp.FormData()
    form.add_field("package", data, filename="package.nupkg", content_type="application/octet-stream")
    sent = {"X-NuGet-ApiKey": live.admin_key} if headers is None else headers
    async with (
        aiohttp.ClientSession() as session,
        session.put(live.url + path, data=form, headers=sent, ssl=tls(live)) as resp,
    ):
        return Answer(resp.status, resp.headers.copy(), await resp.read())


async def call(live: LiveServer, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One request with the admin key in X-NuGet-ApiKey (or the given headers)."""
    sent = {"X-NuGet-ApiKey": live.admin_key} if headers is None else headers
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, live.url + path, headers=sent, ssl=tls(live)) as resp,
    ):
        return Answer(resp.status, resp.headers.copy(), await resp.read())


def nupkg_bytes(tmp: Path, package_id: str, version: str, payload: bytes = b"x") -> bytes:
    """The bytes of a small NuGet-shaped package."""
    return make_package(tmp / "src" / version, package_id, version, payload).read_bytes()


# --- service index ------------------------------------------------------------------------


async def test_service_index_is_public_and_names_every_resource(live_server: LiveServer) -> None:
    """No credentials needed (nuget push reads it before sending its key); the types clients look for."""
    index = await get(f"{live_server.url}/nuget/v3/index.json", tls(live_server))
    assert index.status == 200
    by_type = {r["@type"]: r["@id"] for r in index.json()["resources"]}
    base = f"{live_server.url}/nuget/v3/"
    assert by_type["PackageBaseAddress/3.0.0"] == base + "flatcontainer/"
    assert by_type["PackagePublish/2.0.0"] == base + "package"
    for kind in ("RegistrationsBaseUrl/3.6.0", "RegistrationsBaseUrl/Versioned"):
        assert by_type[kind] == base + "registration/"
    for kind in ("RegistrationsBaseUrl", "RegistrationsBaseUrl/3.0.0-rc", "RegistrationsBaseUrl/3.4.0"):
        assert by_type[kind] == base + "registration-semver1/"
    for kind in ("SearchQueryService", "SearchQueryService/3.0.0-rc", "SearchQueryService/3.5.0"):
        assert by_type[kind] == base + "search"
    assert by_type["LegacyGallery/2.0.0"] == f"{live_server.url}/nuget/v2/"


# --- publish ------------------------------------------------------------------------------


async def test_push_creates_then_conflicts(live_server: LiveServer, tmp_path: Path) -> None:
    """201 with what was stored; the same version again is 409 whose reason phrase names it."""
    data = nupkg_bytes(tmp_path, "Put.Me", "1.0.0")
    created = await put_package(live_server, data)
    assert created.status == 201, created.body
    assert created.json()["id"] == "Put.Me" and created.json()["size"] == len(data)
    again = await put_package(live_server, data, path="/nuget/v3/package")
    assert again.status == 409
    assert again.json()["error"]["code"] == "package-conflict"
    stored = live_server.server.db.sync(feed.resolve, "put.me", "1.0.0")
    assert feed.file_path(feed.store_dir(live_server.paths.state), stored).read_bytes() == data


def zip_with(path: Path, members: dict[str, bytes]) -> bytes:
    """A zip of exactly these members."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path.read_bytes()


NUSPEC = b"<package><metadata><id>Bad.Pkg</id><version>1.0.0</version></metadata></package>"


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"content/a.txt": b"a"}, "exactly one .nuspec at its root; it has no .nuspec"),
        ({"Other.Name.nuspec": NUSPEC}, "declares the id 'Bad.Pkg'"),
        ({"Bad.Pkg.nuspec": NUSPEC, "%2e%2e%2fevil.txt": b"x"}, "breaks rule '.. component'"),
        ({"Bad.Pkg.nuspec": NUSPEC, "a b.txt": b"1", "a%20b.txt": b"2"}, "breaks rule 'duplicate name'"),
        ({"Bad.Pkg.nuspec": b"<package><metadata><id>Bad.Pkg</id></metadata></package>"}, "no <version>"),
    ],
)
async def test_push_refuses_a_bad_package_with_the_reason(
    live_server: LiveServer, tmp_path: Path, members: dict[str, bytes], reason: str
) -> None:
    """No nuspec, an id that disagrees with its manifest's name, unsafe or clashing members: 400 why."""
    answer = await put_package(live_server, zip_with(tmp_path / "bad.nupkg", members))
    assert answer.status == 400, answer.body
    assert reason in answer.json()["error"]["message"]
    assert live_server.server.db.sync(feed.packages) == []
    assert [p.name for p in feed.store_dir(live_server.paths.state).iterdir()] == []  # nothing staged


async def test_push_of_something_not_multipart_is_400(live_server: LiveServer) -> None:
    """A raw body is not what NuGet's protocol sends: 400 saying what is expected."""
    headers = {"X-NuGet-ApiKey": live_server.admin_key, "Content-Type": "application/octet-stream"}
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            live_server.url + "/nuget/v3/package", data=b"PK", headers=headers, ssl=tls(live_server)
        ) as resp,
    ):
        assert resp.status == 400
        assert "multipart/form-data" in (await resp.json())["error"]["message"]


async def test_push_over_the_size_limit_is_413(server_home: Any, tmp_path: Path) -> None:
    """The feed's max_package_bytes: refused as it arrives, nothing left behind."""
    config = server_config.load(server_home).with_changes(feed=server_config.Feed(max_package_bytes=10_000))
    server_config.save(server_home, config)
    live = await start_server(server_home)
    try:
        big = nupkg_bytes(tmp_path, "Too.Big", "1.0.0", os.urandom(20_000))  # random: does not deflate
        answer = await put_package(live, big)
        assert answer.status == 413
        assert "larger than the 10000 bytes" in answer.json()["error"]["message"]
        assert list(feed.store_dir(live.paths.state).iterdir()) == []
    finally:
        await stop_server(live)


# --- delete -------------------------------------------------------------------------------


async def test_delete_removes_and_refuses_what_a_release_pins(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """204 and the file is gone; 404 for what is absent; 409 naming the releases that pin it."""
    for version in ("1.0.0", "2.0.0"):
        assert (await put_package(live_server, nupkg_bytes(tmp_path, "Del.Me", version))).status == 201
    await apply(live_server, {"name": "Shop", "steps": [{**step("Go", "true"), "package": {"id": "Del.Me"}}]})
    await release(live_server, "Shop", "3.1.0")  # pins 2.0.0
    pinned = await call(live_server, "DELETE", "/nuget/v3/package/Del.Me/2.0.0")
    assert pinned.status == 409
    assert pinned.json()["error"]["details"]["releases"] == ["Default/Shop 3.1.0"]
    removed = await call(live_server, "DELETE", "/nuget/v3/package/del.me/1.0")
    assert removed.status == 204
    assert not (feed.store_dir(live_server.paths.state) / "del.me" / "1.0.0").exists()
    assert live_server.server.db.sync(feed.versions, "del.me") == ["2.0.0"]
    assert (await call(live_server, "DELETE", "/nuget/v3/package/Del.Me/1.0.0")).status == 404
    search = await call(live_server, "GET", "/nuget/v3/search?q=del.me")
    assert [v["version"] for v in search.json()["data"][0]["versions"]] == ["2.0.0"]


# --- auth ---------------------------------------------------------------------------------


async def test_reads_take_basic_auth_nuget_and_api_key_headers(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The key as Basic password (any user), in X-NuGet-ApiKey or X-Api-Key: all read."""
    await push_live(live_server, make_zip(tmp_path / "src/Web.1.0.0.zip"))
    url = f"{live_server.url}/nuget/v3/flatcontainer/web/index.json"
    key = live_server.admin_key
    for headers in (basic(key), basic(key, ""), {"X-NuGet-ApiKey": key}, {"X-Api-Key": key}):
        answer = await get(url, tls(live_server), headers)
        assert (answer.status, answer.json()) == (200, {"versions": ["1.0.0"]}), headers
    refused = await get(url, tls(live_server), basic("API-wrong"))
    assert refused.status == 401
    assert "the API key in HTTP Basic is not valid" in refused.json()["error"]["message"]


async def test_scoped_keys_do_what_their_scope_allows(live_server: LiveServer, tmp_path: Path) -> None:
    """feed:read reads only; feed:push pushes but cannot delete; none of them can use the API."""
    db = live_server.server.db
    reader = db.sync(accounts.create_api_key, "reader", [accounts.FEED_READ])
    pusher = db.sync(accounts.create_api_key, "ci", [accounts.FEED_PUSH])
    data = nupkg_bytes(tmp_path, "Scoped.Pkg", "1.0.0")
    refused = await put_package(live_server, data, {"X-NuGet-ApiKey": reader})
    assert refused.status == 403
    assert "has scopes feed:read, not feed:push" in refused.json()["error"]["message"]
    assert (await put_package(live_server, data, {"X-NuGet-ApiKey": pusher})).status == 201
    delete = await call(
        live_server, "DELETE", "/nuget/v3/package/Scoped.Pkg/1.0.0", {"X-NuGet-ApiKey": pusher}
    )
    assert delete.status == 403
    read = await call(live_server, "GET", "/nuget/v3/registration/scoped.pkg/index.json", basic(reader))
    assert read.status == 200
    for key in (reader, pusher):
        status, body = await live_server.api("GET", "/api/Default/machines/v1", key=key)
        assert status == 403 and "created without --scope" in body["error"]["message"]


async def test_a_tentacle_certificate_reads_but_cannot_push(live_server: LiveServer, tmp_path: Path) -> None:
    """A registered tentacle reads the feed; a push with only its certificate is 403 saying what is needed."""
    machine = _context(live_server, live_server.ca_signed(tmp_path, "web-1", register=True))
    form = aiohttp.FormData()
    form.add_field("package", nupkg_bytes(tmp_path, "Cert.Pkg", "1.0.0"), filename="package.nupkg")
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{live_server.url}/nuget/v3/package", data=form, ssl=machine) as resp,
    ):
        assert resp.status == 403
        assert "a tentacle's certificate may only read the feed" in (await resp.json())["error"]["message"]
    assert (await get(f"{live_server.url}/nuget/v3/search", machine)).status == 200


async def test_push_without_a_key_is_401_naming_what_is_expected(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The refusal says X-NuGet-ApiKey and the scope; NuGet prints the reason phrase, which carries it."""
    answer = await put_package(live_server, nupkg_bytes(tmp_path, "No.Key", "1.0.0"), headers={})
    assert answer.status == 401
    message = answer.json()["error"]["message"]
    assert "X-NuGet-ApiKey (nuget push/delete -ApiKey KEY)" in message and "feed:push" in message


async def test_pushes_run_concurrently_without_mixing(live_server: LiveServer, tmp_path: Path) -> None:
    """Ten uploads at once each land as themselves."""
    datas = [nupkg_bytes(tmp_path, "Many.Pkg", f"1.0.{n}", bytes([n]) * 50_000) for n in range(10)]
    answers = await asyncio.gather(*(put_package(live_server, data) for data in datas))
    assert [a.status for a in answers] == [201] * 10
    assert live_server.server.db.sync(feed.versions, "many.pkg") == [f"1.0.{n}" for n in range(10)]


async def test_a_long_request_line_still_gets_a_json_error(live_server: LiveServer) -> None:
    """Three long path parameters and a long query (14 KB): the app answers, in JSON, not aiohttp's parser."""
    long = "x" * 3000
    path = f"/nuget/v3/registration/{long}/page/{long}/{long}.json?q={'9' * 5000}"
    answer = await call(live_server, "GET", path)
    assert (answer.status, answer.headers["Content-Type"]) == (404, "application/json")
