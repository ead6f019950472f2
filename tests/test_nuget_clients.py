"""Real NuGet clients against a real server: NuGet.exe 5.8 on Mono, and Debian's NuGet 2.8.7 pack.

Every test starts its own server (conftest) and gives the client a HOME of its own whose
Mono trust store holds the server's CA (tests/nuget_tools.py). The client reaches the
server as https://localhost:PORT: Mono matches host names only, so this also proves that
the server's certificate names localhost (issue 12, item 7).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server_shim import server_config
from server_shim.store import accounts
from tests.conftest import LiveServer
from tests.deploying import apply, release, step
from tests.nuget_tools import NuGet, make_package, nuget5, source_config, trusting_home

pytestmark = pytest.mark.slow


class Feed:
    """The live server's feed as NuGet clients see it, and a client to use it."""

    def __init__(self, live: LiveServer, tmp: Path) -> None:
        self.live, self.tmp = live, tmp
        self.index = f"https://localhost:{live.server.bound.api}/nuget/v3/index.json"
        self.client: NuGet = nuget5(trusting_home(tmp / "home", live.paths.config / server_config.CA_CERT))
        self.reader = source_config(tmp / "reader", "tentacle", self.index, live.admin_key)
        self.anonymous = source_config(tmp / "anonymous", "tentacle", self.index, None)

    async def push(self, package: Path, key: str | None = None) -> tuple[int, str]:
        """`nuget push` with an API key."""
        return await self.client.run(
            "push", str(package), "-Source", self.index, "-ApiKey", key or self.live.admin_key
        )

    async def pushed(self, package_id: str, *version_list: str) -> None:
        """Push one small package per version, each of which must be accepted."""
        for version in version_list:
            code, output = await self.push(
                make_package(self.tmp / "src", package_id, version, version.encode())
            )
            assert code == 0 and "Your package was pushed." in output, output

    async def install(self, *args: str) -> tuple[int, str, Path]:
        """`nuget install` with the reader's credentials into a fresh folder."""
        out = self.tmp / f"out-{len(list(self.tmp.glob('out-*')))}"
        code, output = await self.client.run(
            "install", *args, "-OutputDirectory", str(out), "-ConfigFile", str(self.reader)
        )
        return code, output, out


@pytest.fixture
def nuget(live_server: LiveServer, tmp_path: Path) -> Feed:
    """NuGet.exe 5.8 set up for the live server's feed."""
    return Feed(live_server, tmp_path)


def installed(out: Path) -> list[str]:
    """The package folders an install made."""
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


async def test_push_and_a_duplicate_push(nuget: Feed) -> None:
    """`nuget push` creates a version; pushing it again fails with the 409 and the server's reason."""
    package = make_package(nuget.tmp / "src", "Real.Push", "1.0.0")
    code, output = await nuget.push(package)
    assert (code, "Your package was pushed." in output) == (0, True), output
    code, output = await nuget.push(package)
    assert code == 1
    assert "409 (Conflict - Real.Push 1.0.0 is already in the built-in feed" in output, output
    code, output = await nuget.client.run(
        "push", str(package), "-Source", nuget.index, "-ApiKey", nuget.live.admin_key, "-SkipDuplicate"
    )
    assert code == 0, output


async def test_list_shows_latest_stable_prerelease_and_all_versions(nuget: Feed) -> None:
    """`nuget list` (v2 Search()) finds by term: newest stable, -Prerelease newest, -AllVersions all."""
    await nuget.pushed("Listed.Web", "1.0.0", "1.10.0", "2.0.0-rc.1")
    await nuget.pushed("Other.Thing", "3.0.0")
    config = ["-ConfigFile", str(nuget.reader)]
    assert "Listed.Web 1.10.0" in await nuget.client.ok("list", "Listed", *config)
    assert "Listed.Web 2.0.0-rc.1" in await nuget.client.ok("list", "Listed", "-Prerelease", *config)
    everything = await nuget.client.ok("list", "Listed", "-AllVersions", "-Prerelease", *config)
    shown = [line for line in everything.splitlines() if line.startswith("Listed.Web ")]
    assert sorted(shown) == ["Listed.Web 1.0.0", "Listed.Web 1.10.0", "Listed.Web 2.0.0-rc.1"]
    assert "Other.Thing" not in everything


async def test_install_exact_latest_and_prerelease(nuget: Feed) -> None:
    """Install by id resolves through the registrations: exact, newest stable, newest prerelease."""
    await nuget.pushed("Install.Me", "1.0.0", "1.2.0", "2.0.0-beta.1")
    code, output, out = await nuget.install("Install.Me", "-Version", "1.0.0")
    assert (code, installed(out)) == (0, ["Install.Me.1.0.0"]), output
    assert (out / "Install.Me.1.0.0" / "content" / "readme.txt").read_bytes() == b"1.0.0"
    code, output, out = await nuget.install("Install.Me")
    assert (code, installed(out)) == (0, ["Install.Me.1.2.0"]), output
    code, output, out = await nuget.install("Install.Me", "-Prerelease")
    assert (code, installed(out)) == (0, ["Install.Me.2.0.0-beta.1"]), output


async def test_install_follows_dependencies(nuget: Feed) -> None:
    """A dependency group in the nuspec reaches the client, which installs the dependency too."""
    await nuget.pushed("Needed.Lib", "1.5.0")
    dependency = "<dependencies><group><dependency id='Needed.Lib' version='1.5.0' /></group></dependencies>"
    package = make_package(nuget.tmp / "src", "Needs.Lib", "1.0.0", dependencies=dependency)
    assert (await nuget.push(package))[0] == 0
    code, output, out = await nuget.install("Needs.Lib", "-Version", "1.0.0")
    assert (code, installed(out)) == (0, ["Needed.Lib.1.5.0", "Needs.Lib.1.0.0"]), output


async def test_a_missing_version_is_a_clean_error(nuget: Feed) -> None:
    """Installing a version the feed lacks exits 1 with NuGet's own 'not found', no crash."""
    await nuget.pushed("Half.There", "1.0.0")
    code, output, out = await nuget.install("Half.There", "-Version", "9.9.9")
    assert code == 1
    assert "Package 'Half.There 9.9.9' is not found" in output, output
    assert "Exception" not in output and installed(out) == []


async def test_delete_removes_a_version_and_refuses_a_pinned_one(nuget: Feed) -> None:
    """`nuget delete` removes an unpinned version; one a release pins gets 409 naming the release."""
    await nuget.pushed("Pinned.Web", "1.0.0", "1.1.0")
    deploy = {**step("Deploy", "true"), "package": {"id": "Pinned.Web"}}
    await apply(nuget.live, {"name": "Shop", "steps": [deploy]})
    await release(nuget.live, "Shop", "7.0.0")  # pins the newest: 1.1.0
    delete = ["delete", "Pinned.Web", "-Source", nuget.index, "-ApiKey", nuget.live.admin_key]
    code, output = await nuget.client.run(*delete[:2], "1.1.0", *delete[2:])
    assert code == 1
    assert "409 (Conflict - Pinned.Web 1.1.0 is pinned by 1 release(s): Default/Shop 7.0.0" in output, output
    output = await nuget.client.ok(*delete[:2], "1.0.0", *delete[2:])
    assert "Pinned.Web 1.0.0 was deleted successfully." in output
    code, output, _ = await nuget.install("Pinned.Web", "-Version", "1.0.0")
    assert code == 1 and "is not found" in output, output
    code, output = await nuget.client.run(*delete[:2], "1.0.0", *delete[2:])
    assert code == 1 and "404 (Not Found - package Pinned.Web version 1.0.0" in output, output


async def test_reads_need_the_key_as_basic_auth_password(nuget: Feed) -> None:
    """Without nuget.config credentials reads are refused, saying what is expected; with them they work."""
    await nuget.pushed("Secret.Pkg", "1.0.0")
    code, output = await nuget.client.run("list", "Secret", "-ConfigFile", str(nuget.anonymous))
    assert code == 1
    assert "401 Unauthorized - " in output, output  # NuGet answers the challenge with empty credentials
    assert "reading the built-in feed needs HTTP Basic with an API key as the password" in output, output
    assert "Secret.Pkg 1.0.0" in await nuget.client.ok("list", "Secret", "-ConfigFile", str(nuget.reader))
    wrong = source_config(nuget.tmp / "wrong", "tentacle", nuget.index, "API-not-a-key")
    code, output = await nuget.client.run("list", "Secret", "-ConfigFile", str(wrong))
    assert code == 1 and "401" in output, output


async def test_a_feed_push_key_pushes_but_cannot_delete_or_deploy(nuget: Feed) -> None:
    """A key made with --scope feed:push pushes; deleting is refused (403) and so is the API."""
    key = nuget.live.server.db.sync(accounts.create_api_key, "ci", [accounts.FEED_PUSH])
    code, output = await nuget.push(make_package(nuget.tmp / "src", "Ci.Built", "1.0.0"), key)
    assert code == 0, output
    code, output = await nuget.client.run(
        "delete", "Ci.Built", "1.0.0", "-Source", nuget.index, "-ApiKey", key
    )
    assert code == 1
    assert "403 (Forbidden - API key 'ci' has scopes feed:push, not feed:delete" in output, output
    status, body = await nuget.live.api("GET", "/api/Default/machines/v1", key=key)
    assert status == 403
    assert "limited to feed:push" in body["error"]["message"]
