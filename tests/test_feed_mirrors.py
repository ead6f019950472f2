"""Mirror feeds: their definitions, the static v3 feed exported for a mirror to serve, and the
command line that pushes packages, adds feeds and exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server_shim.cli import main as cli
from server_shim.store import feed_export
from server_shim.store import feed_store as feed
from server_shim.store.feed_store import FeedCorrupt, FeedError
from tentacle.common.paths import InstancePaths
from tests.feed_helpers import Store, make_nupkg, make_tar_gz, make_zip, push_versions, sha512_of
from tests.feed_helpers import store as store

# --- mirror feeds ---------------------------------------------------------------------------


def test_add_feed_replaces_and_lists(store: Store) -> None:
    """A named mirror feed keeps its URLs in order without duplicates; re-adding replaces it."""
    one, two = "https://mirror-a.example/feed/index.json", "https://mirror-b.example:8443/index.json"
    store.db.sync(feed.add_feed, "near", [one, two, one])
    assert store.db.sync(feed.feed_mirrors) == {"near": [one, two]}
    store.db.sync(feed.add_feed, "near", [two])
    store.db.sync(feed.add_feed, "far", [one])
    assert store.db.sync(feed.feed_mirrors) == {"far": [one], "near": [two]}


@pytest.mark.parametrize(
    ("name", "mirrors", "why"),
    [
        ("builtin", ["https://m.example/index.json"], "reserved"),
        ("Builtin", ["https://m.example/index.json"], "reserved"),
        ("near", [], "at least one"),
        ("near", ["http://m.example/index.json"], "https://"),
        ("near", ["https:///index.json"], "https://"),
        ("near", ["https://user:pw@m.example/index.json"], "credentials"),
        ("bad name", ["https://m.example/index.json"], "letters, digits"),
    ],
)
def test_add_feed_refuses_bad_definitions(store: Store, name: str, mirrors: list[str], why: str) -> None:
    """Reserved names, empty lists and non-https URLs are refused; nothing is stored."""
    with pytest.raises(FeedError, match=why):
        store.db.sync(feed.add_feed, name, mirrors)
    assert store.db.sync(feed.feed_mirrors) == {}


# --- static export --------------------------------------------------------------------------


BASE = "https://mirror.example/feed/"


def read_json(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text())


def test_export_writes_a_static_v3_feed(store: Store, tmp_path: Path) -> None:
    """index.json, per-package version lists and the package files, in the flat-container layout."""
    push_versions(store, "My.App", ["1.10.0", "1.2.0-RC"])
    nupkg = store.push(make_nupkg(store.src / "x.nupkg", "Other", "3.0.0"))
    out = tmp_path / "export"
    report = feed_export.export(store.db, store.feed_dir, out, "https://mirror.example/tentacle")
    assert (report.packages, report.copied, report.skipped) == (3, 3, 0)
    resource = read_json(out / "index.json")["resources"][0]
    assert (resource["@type"], resource["@id"]) == (
        "PackageBaseAddress/3.0.0",
        "https://mirror.example/tentacle/flatcontainer/",
    )
    assert read_json(out / "flatcontainer/my.app/index.json") == {"versions": ["1.2.0-rc", "1.10.0"]}
    assert read_json(out / "flatcontainer/other/index.json") == {"versions": ["3.0.0"]}
    exported = out / "flatcontainer/other/3.0.0/other.3.0.0.nupkg"
    assert sha512_of(exported) == nupkg.sha512
    rc = store.db.sync(feed.resolve, "My.App", "1.2.0-rc")
    exported_rc = out / "flatcontainer/my.app/1.2.0-rc/my.app.1.2.0-rc.zip"
    assert exported_rc.read_bytes() == feed.file_path(store.feed_dir, rc).read_bytes()
    assert exported.stat().st_mode & 0o777 == 0o644  # a web server's own user must read it


def test_export_is_incremental(store: Store, tmp_path: Path) -> None:
    """A second export copies nothing; a new version copies one file; a lost file is copied again."""
    push_versions(store, "Web", ["1.0.0", "1.1.0"])
    out = tmp_path / "export"
    feed_export.export(store.db, store.feed_dir, out, BASE)
    index = out / "flatcontainer/web/index.json"
    index_mtime = index.stat().st_mtime_ns
    again = feed_export.export(store.db, store.feed_dir, out, BASE)
    assert (again.copied, again.skipped, again.bytes_copied) == (0, 2, 0)
    assert index.stat().st_mtime_ns == index_mtime  # unchanged index files are not rewritten
    added = store.push(make_zip(store.src / "Web.2.0.0.zip", b"two"))
    newer = feed_export.export(store.db, store.feed_dir, out, BASE)
    assert (newer.copied, newer.skipped, newer.bytes_copied) == (1, 2, added.size)
    assert read_json(index) == {"versions": ["1.0.0", "1.1.0", "2.0.0"]}
    (out / "flatcontainer/web/1.0.0/web.1.0.0.zip").unlink()
    repaired = feed_export.export(store.db, store.feed_dir, out, BASE)
    assert (repaired.copied, repaired.skipped) == (1, 2)
    leftovers = [p.name for p in out.rglob(".*") if p.name != feed_export.MANIFEST_FILE]
    assert leftovers == []  # no temp files left behind


def test_export_refuses_a_corrupted_store(store: Store, tmp_path: Path) -> None:
    """A stored file whose bytes changed since push is not exported."""
    ref = store.push(make_zip(store.src / "Web.1.0.0.zip"))
    feed.file_path(store.feed_dir, ref).write_bytes(b"tampered")
    with pytest.raises(FeedCorrupt, match="does not match the sha512"):
        feed_export.export(store.db, store.feed_dir, tmp_path / "export", BASE)
    assert not (tmp_path / "export/flatcontainer/web/1.0.0/web.1.0.0.zip").exists()


def test_export_refuses_a_bad_base_url(store: Store, tmp_path: Path) -> None:
    """--base-url must be an http(s) URL."""
    with pytest.raises(FeedError, match="base-url"):
        feed_export.export(store.db, store.feed_dir, tmp_path / "export", "ftp://mirror.example/")


# --- command line -------------------------------------------------------------------------


def test_cli_push_prints_one_line_per_package_and_fails_on_bad_files(
    server_home: InstancePaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`package push` prints ID VERSION sha512= size= per file; a bad file is named, exit 1."""
    good = make_tar_gz(tmp_path / "src/Octo.Web.1.0.0.tar.gz")
    bad = make_zip(tmp_path / "src/broken.nupkg")
    home = ["--home", str(server_home.config)]
    assert cli.main([*home, "package", "push", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == f"Octo.Web 1.0.0 sha512={sha512_of(good)} size={good.stat().st_size}\n"
    assert "broken.nupkg: a .nupkg needs exactly one .nuspec" in err
    assert cli.main([*home, "package", "push", str(good)]) == 0


def test_cli_feed_add_list_and_export(
    server_home: InstancePaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`feed add` names mirrors, `feed list --json` shows them and builtin, `feed export` writes."""
    home = ["--home", str(server_home.config)]
    url = "https://mirror.example/index.json"
    assert cli.main([*home, "feed", "add", "near", "--mirror", url]) == 0
    assert cli.main([*home, "feed", "add", "builtin", "--mirror", url]) == 2
    assert cli.main([*home, "package", "push", str(make_zip(tmp_path / "src/Web.1.0.0.zip"))]) == 0
    capsys.readouterr()
    assert cli.main([*home, "feed", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {"name": "builtin", "kind": "builtin", "packages": 1, "mirrors": []},
        {"name": "near", "kind": "mirrors", "mirrors": [url]},
    ]
    out = tmp_path / "export"
    assert cli.main([*home, "feed", "export", str(out), "--base-url", "https://m.example"]) == 0
    assert "1 copied" in capsys.readouterr().out
    assert (out / "flatcontainer/web/1.0.0/web.1.0.0.zip").is_file()
