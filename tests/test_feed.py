"""The built-in feed: push, resolve, and its HTTPS routes (mirror feeds, static export and the
command line: tests/test_feed_mirrors.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from server_shim import server_config
from server_shim.store import feed_store as feed
from server_shim.store import machine_rows as machines
from server_shim.store.feed_store import PackageConflict, PackageError, PackageNotFound, PackageTooLarge
from tentacle.net.tls import client_context
from tests.conftest import LiveServer
from tests.feed_helpers import (
    Store,
    _context,
    get,
    make_nupkg,
    make_tar_gz,
    make_zip,
    push_live,
    push_versions,
    sha512_of,
)
from tests.feed_helpers import store as store

# --- push -----------------------------------------------------------------------------------


def test_push_nupkg_takes_identity_from_its_nuspec(store: Store) -> None:
    """A .nupkg's id and version come from its nuspec; hash, size and stored bytes are exact."""
    source = make_nupkg(store.src / "anything.nupkg", "Octo.Web", "1.02.3-Beta.1")
    ref = store.push(source)
    assert (ref.id, ref.version) == ("Octo.Web", "1.2.3-Beta.1")
    assert (ref.sha512, ref.size) == (sha512_of(source), source.stat().st_size)
    assert ref.file_name == "octo.web.1.2.3-beta.1.nupkg"
    stored = feed.file_path(store.feed_dir, ref)
    assert stored == store.feed_dir / "octo.web" / "1.2.3-beta.1" / "octo.web.1.2.3-beta.1.nupkg"
    assert stored.read_bytes() == source.read_bytes()
    row = store.db.sync(lambda c: dict(c.execute("SELECT * FROM packages").fetchone()))
    assert (row["lower_id"], row["version"], row["sha512"]) == ("octo.web", "1.2.3-Beta.1", ref.sha512)


@pytest.mark.parametrize(
    ("name", "stored_name"),
    [
        ("My.Pkg.1.2.3-beta.1.tar.gz", "my.pkg.1.2.3-beta.1.tar.gz"),
        ("My.Pkg.1.2.3-beta.1.tgz", "my.pkg.1.2.3-beta.1.tar.gz"),
        ("My.Pkg.1.2.3-beta.1.zip", "my.pkg.1.2.3-beta.1.zip"),
    ],
)
def test_push_archive_takes_identity_from_its_name(store: Store, name: str, stored_name: str) -> None:
    """A .zip or .tar.gz/.tgz is ID.VERSION.ext; it is stored under a lowercase canonical name."""
    build = make_zip if name.endswith(".zip") else make_tar_gz
    source = build(store.src / name)
    ref = store.push(source)
    assert (ref.id, ref.version, ref.file_name) == ("My.Pkg", "1.2.3-beta.1", stored_name)
    assert feed.file_path(store.feed_dir, ref).read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    ("name", "package_id", "version"),
    [
        ("My.Pkg.1.2.3-beta.1.tar.gz", "My.Pkg", "1.2.3-beta.1"),
        ("Foo.2.0.zip", "Foo", "2.0.0"),
        ("A.1.2.0.1.zip", "A", "1.2.0.1"),
        ("Pkg.v2.3.1.tgz", "Pkg.v2", "3.1.0"),
        ("Lib-9.1.0+sha.5.zip", "Lib-9", "1.0.0"),
        ("Foo.1.2.3.4.5.zip", "Foo.1", "2.3.4.5"),
    ],
)
def test_split_file_name_finds_where_the_version_starts(name: str, package_id: str, version: str) -> None:
    """The version starts at the first '.digit' where the rest is a NuGet version."""
    found_id, found_version = feed.split_file_name(name)
    assert (found_id, str(found_version)) == (package_id, version)


@pytest.mark.parametrize("name", ["NoVersion.zip", ".1.0.0.zip", "Foo.x1.zip", "Foo..1.0.zip", "Foo.1.0.exe"])
def test_split_file_name_refuses_names_without_id_and_version(name: str) -> None:
    """A name without an id, a version or a known ending is refused with a hint."""
    with pytest.raises(PackageError, match=name.replace(".", r"\.")):
        feed.split_file_name(name)


def test_push_refuses_nupkg_without_nuspec(store: Store) -> None:
    """A zip named .nupkg without a root .nuspec is refused and nothing is stored."""
    source = make_zip(store.src / "Foo.1.0.0.nupkg")
    with pytest.raises(PackageError, match=r"exactly one \.nuspec"):
        store.push(source)
    assert list(store.feed_dir.iterdir()) == []
    assert store.db.sync(feed.packages) == []


def test_push_refuses_nupkg_with_bad_nuspec(store: Store) -> None:
    """A nuspec whose version is not a NuGet version is refused, naming the file."""
    source = make_nupkg(store.src / "x.nupkg", "Foo", "1.x")
    with pytest.raises(PackageError, match=r"x\.nupkg: .*1\.x"):
        store.push(source)


@pytest.mark.parametrize(
    ("name", "why"), [("Foo.1.0.0.zip", "not a zip"), ("Foo.1.0.0.tar.gz", "not a gzip")]
)
def test_push_refuses_file_that_is_not_what_its_name_says(store: Store, name: str, why: str) -> None:
    """A .zip that is no zip, a .tar.gz that is no gzip, are refused."""
    source = store.src / name
    source.parent.mkdir(parents=True)
    source.write_bytes(b"plain text, not an archive")
    with pytest.raises(PackageError, match=why):
        store.push(source)


def test_push_refuses_file_over_the_size_limit(store: Store) -> None:
    """A file larger than the limit is refused (413, as every body over a limit) and its copy removed."""
    source = make_tar_gz(store.src / "Big.1.0.0.tar.gz", bytes(range(256)) * 64)
    with pytest.raises(PackageTooLarge, match="larger than the 100 bytes") as caught:
        feed.push(store.db, store.feed_dir, source, max_bytes=100)
    assert caught.value.http_status == 413
    assert list(store.feed_dir.iterdir()) == []


def test_push_refuses_missing_file_and_unknown_kind(store: Store) -> None:
    """A file that cannot be read, or is not a package kind, fails with its name."""
    with pytest.raises(PackageError, match="cannot read"):
        store.push(store.src / "Gone.1.0.0.zip")
    with pytest.raises(PackageError, match=r"Foo\.1\.0\.0\.rpm: not a package file"):
        store.push(store.src / "Foo.1.0.0.rpm")


def test_repush_of_identical_bytes_changes_nothing(store: Store) -> None:
    """Pushing the same id, version and bytes again is a no-op (even under another name)."""
    first = store.push(make_zip(store.src / "Foo.1.0.0.zip"))
    stored = feed.file_path(store.feed_dir, first)
    mtime = stored.stat().st_mtime_ns
    again = store.push(make_zip(store.src / "again" / "foo.1.0.zip"))
    assert again == first
    assert stored.stat().st_mtime_ns == mtime
    assert len(store.db.sync(feed.packages)) == 1
    assert [p.name for p in store.feed_dir.iterdir()] == ["foo"]  # no temp file left behind


@pytest.mark.parametrize("second_version", ["1.0.0-beta", "1.0.0-BETA", "1.0-beta"])
def test_repush_of_other_bytes_conflicts(store: Store, second_version: str) -> None:
    """The same version (by NuGet equality) with other bytes is a 409 conflict; the file stays."""
    first = store.push(make_nupkg(store.src / "a.nupkg", "Foo", "1.0.0-beta", b"one"))
    with pytest.raises(PackageConflict, match=r"in the built-in feed \(with other content\)") as caught:
        store.push(make_nupkg(store.src / "b.nupkg", "foo", second_version, b"two"))
    assert caught.value.http_status == 409
    assert sha512_of(feed.file_path(store.feed_dir, first)) == first.sha512
    assert store.db.sync(feed.packages) == [first]


# --- resolve and versions -------------------------------------------------------------------


def test_resolve_newest_stable_exact_and_missing(store: Store) -> None:
    """None picks the newest stable; an exact version matches by NuGet equality; absent is named."""
    push_versions(store, "Web", ["1.0.0", "2.0.0", "1.10.0", "2.1.0-beta"])
    assert store.db.sync(feed.resolve, "web", None).version == "2.0.0"
    assert store.db.sync(feed.resolve, "WEB", "2.1.0-BETA").version == "2.1.0-beta"
    assert store.db.sync(feed.resolve, "Web", "1.10").version == "1.10.0"
    with pytest.raises(PackageNotFound, match=r"package Web version 3\.0\.0 is not in the built-in feed"):
        store.db.sync(feed.resolve, "Web", "3.0.0")
    with pytest.raises(PackageNotFound, match="package Nope is not in the built-in feed"):
        store.db.sync(feed.resolve, "Nope", None)


def test_resolve_newest_prerelease_when_only_prereleases(store: Store) -> None:
    """Without a stable version, None picks the newest prerelease by NuGet order."""
    push_versions(store, "Db", ["1.0.0-alpha.2", "1.0.0-alpha.10", "1.0.0-alpha.9"])
    assert store.db.sync(feed.resolve, "Db", None).version == "1.0.0-alpha.10"


def test_versions_in_nuget_order(store: Store) -> None:
    """versions() lists normalized versions in NuGet order, not text order."""
    push_versions(store, "Lib", ["1.10.0", "1.2.0", "1.0.0", "1.0.0-rc.1", "1.0.0.5"])
    assert store.db.sync(feed.versions, "lib") == ["1.0.0-rc.1", "1.0.0", "1.0.0.5", "1.2.0", "1.10.0"]
    assert store.db.sync(feed.versions, "other") == []


# --- HTTPS routes on a real server ----------------------------------------------------------


async def test_registered_tentacle_reads_the_feed(live_server: LiveServer, tmp_path: Path) -> None:
    """Over mutual TLS a registered tentacle gets the service index, versions and the file."""
    payload = os.urandom(200_000)
    ref = await push_live(live_server, make_tar_gz(tmp_path / "src/My.Pkg.1.2.3-beta.1.tar.gz", payload))
    await push_live(live_server, make_tar_gz(tmp_path / "src/My.Pkg.1.0.0.tar.gz", payload))
    tls = _context(live_server, live_server.ca_signed(tmp_path, "web-1", register=True))
    index = await get(f"{live_server.url}/nuget/v3/index.json", tls)
    assert index.status == 200, index.body
    base = index.json()["resources"][0]
    assert (base["@type"], base["@id"]) == (
        "PackageBaseAddress/3.0.0",
        f"{live_server.url}/nuget/v3/flatcontainer/",
    )
    listed = await get(base["@id"] + "my.pkg/index.json", tls)
    assert listed.json() == {"versions": ["1.0.0", "1.2.3-beta.1"]}
    got = await get(base["@id"] + "my.pkg/1.2.3-beta.1/my.pkg.1.2.3-beta.1.tar.gz", tls)
    assert got.status == 200
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert "Content-Encoding" not in got.headers  # the client must get the .tar.gz bytes as they are
    stored = feed.file_path(feed.store_dir(live_server.paths.state), ref).read_bytes()
    assert hashlib.sha512(got.body).hexdigest() == hashlib.sha512(stored).hexdigest() == ref.sha512


async def test_range_and_if_range_resume_a_download(live_server: LiveServer, tmp_path: Path) -> None:
    """Range gives the exact slice; If-Range with a current validator resumes, a stale one restarts."""
    source = make_nupkg(tmp_path / "src/x.nupkg", "Big", "1.0.0", os.urandom(300_000))
    await push_live(live_server, source)
    tls = _context(live_server, live_server.ca_signed(tmp_path, "web-1", register=True))
    url = f"{live_server.url}/nuget/v3/flatcontainer/big/1.0.0/big.1.0.0.nupkg"
    whole = await get(url, tls)
    etag = whole.headers["ETag"]
    part = await get(url, tls, {"Range": "bytes=1000-", "If-Range": etag})
    assert part.status == 206
    assert part.body == source.read_bytes()[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(whole.body) - 1}/{len(whole.body)}"
    stale = await get(url, tls, {"Range": "bytes=1000-", "If-Range": '"not-the-etag"'})
    assert (stale.status, stale.body) == (200, source.read_bytes())


async def test_request_without_credentials_is_401(live_server: LiveServer, tmp_path: Path) -> None:
    """No client certificate and no API key: 401 with a JSON error and a Basic challenge."""
    await push_live(live_server, make_zip(tmp_path / "src/Web.1.0.0.zip"))
    tls = client_context(live_server.paths.config / server_config.CA_CERT)
    for path in ("flatcontainer/web/index.json", "flatcontainer/web/1.0.0/web.1.0.0.zip", "search"):
        answer = await get(f"{live_server.url}/nuget/v3/{path}", tls)
        assert answer.status == 401, path
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="server-shim feed"')


async def test_unregistered_or_revoked_certificate_is_403(live_server: LiveServer, tmp_path: Path) -> None:
    """A certificate signed by our CA but not registered, or of a removed machine, gets 403."""
    url = f"{live_server.url}/nuget/v3/search"
    stranger = _context(live_server, live_server.ca_signed(tmp_path, "stranger", register=False))
    answer = await get(url, stranger)
    assert (answer.status, answer.json()["error"]["code"]) == (403, "unregistered")
    removed = _context(live_server, live_server.ca_signed(tmp_path, "old-web", register=True))
    assert (await get(url, removed)).status == 200
    live_server.server.db.sync(machines.revoke, "Default", "old-web")
    answer = await get(url, removed)
    assert (answer.status, answer.json()["error"]["code"]) == (403, "revoked")


async def test_operator_api_key_reads_the_feed(live_server: LiveServer, tmp_path: Path) -> None:
    """A valid X-Api-Key gets in without a certificate; a wrong one gets 401."""
    await push_live(live_server, make_zip(tmp_path / "src/Web.1.0.0.zip"))
    tls = client_context(live_server.paths.config / server_config.CA_CERT)
    url = f"{live_server.url}/nuget/v3/flatcontainer/web/index.json"
    answer = await get(url, tls, {"X-Api-Key": live_server.admin_key})
    assert (answer.status, answer.json()) == (200, {"versions": ["1.0.0"]})
    wrong = await get(url, tls, {"X-Api-Key": "not-a-key"})
    assert wrong.status == 401
    assert wrong.json()["error"]["message"].startswith("the API key in X-Api-Key is not valid")


async def test_unknown_package_version_or_file_is_404(live_server: LiveServer, tmp_path: Path) -> None:
    """Unknown ids, versions and file names are 404 with a JSON error."""
    await push_live(live_server, make_zip(tmp_path / "src/Web.1.0.0.zip"))
    tls = _context(live_server, live_server.ca_signed(tmp_path, "web-1", register=True))
    base = f"{live_server.url}/nuget/v3/flatcontainer/"
    for path in (
        "nope/index.json",
        "web/2.0.0/web.2.0.0.zip",
        "web/x.y/web.x.y.zip",
        "web/1.0.0/web.1.0.0.nupkg",
    ):
        answer = await get(base + path, tls)
        assert answer.status == 404, path
        assert answer.json()["error"]["code"] == "not-found"
