"""Registrations and search, answered from the database, on a real server; and their pure documents."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from server_shim.api.catalog_routes import SearchRequestError, search_query
from server_shim.store import feed_catalog as catalog
from server_shim.store import feed_export
from server_shim.store import feed_store as feed
from tentacle.protocol import nuget_documents as documents
from tentacle.protocol.nuget_documents import CatalogEntry, FeedUrls
from tests.conftest import LiveServer
from tests.feed_helpers import make_zip
from tests.nuget_tools import make_package
from tests.test_feed_protocol import call

DEPENDS = (
    "<dependencies><group targetFramework='net472'><dependency id='Lib.A' version='[1.0, 2.0)' />"
    "</group><group><dependency id='Lib.B' /></group></dependencies>"
)


async def push_all(live: LiveServer, tmp: Path, package_id: str, *versions: str, depends: str = "") -> None:
    """Push one small package per version straight into the store."""
    feed_dir = feed.store_dir(live.paths.state)
    for version in versions:
        package = make_package(tmp / "src" / version, package_id, version, version.encode(), depends)
        await asyncio.to_thread(feed.push, live.server.db, feed_dir, package)


async def document(live: LiveServer, path: str) -> Any:
    """A JSON document the feed serves (200 required)."""
    answer = await call(live, "GET", path)
    assert answer.status == 200, (path, answer.body)
    return answer.json()


async def test_registration_index_inlines_leaves_with_their_catalog_entries(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """Index, page and leaf as NuGet documents them (catalogEntry: id, version, listed, dependencies...)."""
    await push_all(live_server, tmp_path, "Reg.Web", "1.0.0", "1.0.10", "1.0.9+build.7", depends=DEPENDS)
    base = f"{live_server.url}/nuget/v3/registration/reg.web/"
    index = await document(live_server, "/nuget/v3/registration/reg.web/index.json")
    assert (index["@id"], index["count"]) == (base + "index.json", 1)
    page = index["items"][0]
    assert (page["count"], page["lower"], page["upper"], page["parent"]) == (
        3,
        "1.0.0",
        "1.0.10",
        base + "index.json",
    )
    entries = [leaf["catalogEntry"] for leaf in page["items"]]
    assert [e["version"] for e in entries] == ["1.0.0", "1.0.9+build.7", "1.0.10"]
    entry = entries[0]
    assert (entry["id"], entry["listed"], entry["description"]) == (
        "Reg.Web",
        True,
        "Reg.Web for the NuGet client tests",
    )
    flat = f"{live_server.url}/nuget/v3/flatcontainer/reg.web/1.0.0/reg.web.1.0.0.nupkg"
    assert entry["packageContent"] == page["items"][0]["packageContent"] == flat
    groups = {g.get("targetFramework", ""): g["dependencies"] for g in entry["dependencyGroups"]}
    assert [(d["id"], d["range"]) for d in groups["net472"]] == [("Lib.A", "[1.0, 2.0)")]
    assert [(d["id"], d["range"]) for d in groups[""]] == [("Lib.B", "(, )")]
    leaf = await document(live_server, "/nuget/v3/registration/reg.web/1.0.10.json")
    assert (leaf["listed"], leaf["registration"]) == (True, base + "index.json")
    fetched = await document(live_server, "/nuget/v3/registration/reg.web/page/1.0.0/1.0.10.json")
    assert [item["catalogEntry"]["version"] for item in fetched["items"]] == [
        "1.0.0",
        "1.0.9+build.7",
        "1.0.10",
    ]


async def test_the_semver1_hive_leaves_out_semver2_versions(live_server: LiveServer, tmp_path: Path) -> None:
    """Older clients' hive: no dotted labels, no build metadata."""
    await push_all(live_server, tmp_path, "Hive.Pkg", "1.0.0", "2.0.0-beta.1", "2.0.0-beta", "3.0.0+meta")
    index = await document(live_server, "/nuget/v3/registration-semver1/hive.pkg/index.json")
    assert [leaf["catalogEntry"]["version"] for leaf in index["items"][0]["items"]] == ["1.0.0", "2.0.0-beta"]
    answer = await call(live_server, "GET", "/nuget/v3/registration-semver1/hive.pkg/2.0.0-beta.1.json")
    assert answer.status == 404


async def test_registration_pages_beyond_128_versions(live_server: LiveServer, tmp_path: Path) -> None:
    """From 128 versions the index lists pages of 64 by @id; each page fetched holds its leaves."""
    await push_all(live_server, tmp_path, "Paged.Pkg", *(f"1.0.{n}" for n in range(130)))
    index = await document(live_server, "/nuget/v3/registration/paged.pkg/index.json")
    assert index["count"] == 3 and all("items" not in page for page in index["items"])
    assert [(p["lower"], p["upper"], p["count"]) for p in index["items"]] == [
        ("1.0.0", "1.0.63", 64),
        ("1.0.64", "1.0.127", 64),
        ("1.0.128", "1.0.129", 2),
    ]
    page = await call(live_server, "GET", index["items"][1]["@id"].removeprefix(live_server.url))
    assert [i["catalogEntry"]["version"] for i in page.json()["items"]][:2] == ["1.0.64", "1.0.65"]


async def test_search_pages_filters_and_counts(live_server: LiveServer, tmp_path: Path) -> None:
    """q matches id, tags, description; skip/take page over ids; prerelease, semVerLevel filter versions."""
    for name in ("Alpha.Web", "Beta.Web", "Gamma.Db"):
        await push_all(live_server, tmp_path, name, "1.0.0")
    await push_all(live_server, tmp_path, "Delta.Web", "0.9.0-rc.1")
    await push_all(live_server, tmp_path, "Alpha.Web", "2.0.0-beta")
    await asyncio.to_thread(
        feed.push,
        live_server.server.db,
        feed.store_dir(live_server.paths.state),
        make_zip(tmp_path / "Zip.Web.1.0.0.zip"),
    )

    async def search(query: str) -> tuple[int, list[tuple[str, str, list[str]]]]:
        found = await document(live_server, "/nuget/v3/search?" + query)
        return found["totalHits"], [
            (p["id"], p["version"], [v["version"] for v in p["versions"]]) for p in found["data"]
        ]

    assert await search("q=web") == (2, [("Alpha.Web", "1.0.0", ["1.0.0"]), ("Beta.Web", "1.0.0", ["1.0.0"])])
    total, found = await search("q=web&prerelease=true")
    assert total == 2 and found[0] == ("Alpha.Web", "2.0.0-beta", ["1.0.0", "2.0.0-beta"])
    assert [f[0] for f in found] == ["Alpha.Web", "Beta.Web"]  # Delta.Web has only a SemVer 2 version
    total, found = await search("q=web&prerelease=true&semVerLevel=2.0.0&skip=1&take=1")
    assert (total, [f[0] for f in found]) == (3, ["Beta.Web"])
    assert await search("q=packageid:gamma.db") == (1, [("Gamma.Db", "1.0.0", ["1.0.0"])])
    assert (await search("q=TENTACLE+alpha"))[0] == 1  # tags and id, every term, any case
    assert (await search(""))[0] == 3  # a zip is not a NuGet package: never shown


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"skip": "-1"}, "skip:"),
        ({"take": "lots"}, "take:"),
        ({"prerelease": "maybe"}, "prerelease:"),
        ({"semVerLevel": "two"}, "semVerLevel:"),
    ],
)
def test_bad_search_parameters_are_named(query: dict[str, str], problem: str) -> None:
    """Each bad parameter is a 400 naming it."""
    with pytest.raises(SearchRequestError, match=problem):
        search_query(query)


def test_search_take_is_capped() -> None:
    """take beyond the maximum is cut to it, as NuGet servers do."""
    assert search_query({"take": "100000"}).take == catalog.MAX_TAKE


def test_index_inlines_below_128_and_pages_from_128() -> None:
    """nuget.org's rule, as the pure document builder applies it."""
    urls = FeedUrls("https://feed.example/")
    entries = [CatalogEntry("P", f"1.0.{n}", f"1.0.{n}", 0.0) for n in range(128)]
    inline = documents.registration_index(entries[:127], urls, True)
    assert [len(page["items"]) for page in inline["items"]] == [64, 63]
    paged = documents.registration_index(entries, urls, True)
    assert [p["count"] for p in paged["items"]] == [64, 64] and "items" not in paged["items"][0]


async def test_rows_pushed_before_the_catalog_are_filled_in_at_start(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """An upgraded server reads old rows' nuspecs once and shows them to NuGet clients."""
    await push_all(live_server, tmp_path, "Old.Row", "1.0.0", "2.0.0-rc.1", depends=DEPENDS)
    db = live_server.server.db

    def forget(conn: Any) -> None:
        conn.execute(
            "UPDATE packages SET catalog = NULL, full_version = NULL, prerelease = NULL, semver2 = NULL"
        )
        conn.execute("DELETE FROM package_ids")

    db.sync(forget)
    assert (await call(live_server, "GET", "/nuget/v3/search?q=old.row")).json()["totalHits"] == 0
    assert await asyncio.to_thread(feed.prepare, db, feed.store_dir(live_server.paths.state)) == 2
    found = (
        await call(live_server, "GET", "/nuget/v3/search?q=old.row&prerelease=true&semVerLevel=2.0.0")
    ).json()["data"]
    assert found[0]["version"] == "2.0.0-rc.1"
    index = await document(live_server, "/nuget/v3/registration/old.row/index.json")
    assert index["items"][0]["items"][0]["catalogEntry"]["dependencyGroups"][0]["targetFramework"] == "net472"


async def test_export_writes_registrations_and_prunes_deleted_versions(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """A static export holds both hives with absolute URLs; a deleted version's files leave it."""
    await push_all(live_server, tmp_path, "Exp.Web", "1.0.0", "1.1.0")
    db, feed_dir, out = live_server.server.db, feed.store_dir(live_server.paths.state), tmp_path / "export"
    base = "https://mirror.example/nuget/"
    await asyncio.to_thread(feed_export.export, db, feed_dir, out, base)
    index = json.loads((out / "registration/exp.web/index.json").read_text())
    assert index["@id"] == base + "registration/exp.web/index.json"
    assert (out / "registration/exp.web/1.1.0.json").is_file()
    assert (out / "registration-semver1/exp.web/index.json").is_file()
    ref = db.sync(feed.delete_version, "Exp.Web", "1.1.0")
    feed.remove_file(feed_dir, ref)
    await asyncio.to_thread(feed_export.export, db, feed_dir, out, base)
    assert not (out / "registration/exp.web/1.1.0.json").exists()
    assert not (out / "flatcontainer/exp.web/1.1.0").exists()
    assert json.loads((out / "flatcontainer/exp.web/index.json").read_text()) == {"versions": ["1.0.0"]}
