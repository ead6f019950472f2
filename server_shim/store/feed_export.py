"""`server-shim feed export DIR`: the built-in feed as a static NuGet v3 feed any web server serves.

What it writes under DIR, every URL in it absolute (NuGet clients refuse a relative
``@id``), rooted at the base URL where DIR will be served::

    index.json                                         service index
    flatcontainer/{lowerid}/index.json                 versions
    flatcontainer/{lowerid}/{lowerversion}/{file}      the package files
    registration/{lowerid}/index.json (+ page/, {lowerversion}.json)            SemVer 2 hive
    registration-semver1/{lowerid}/...                                           SemVer 1 hive

so that a mirror answers tentacles (the flat container) and NuGet clients installing by id
(registrations), as the server does. Without a base URL (``--relative``) the export holds the
flat container alone, with a relative PackageBaseAddress: tentacles follow it, NuGet clients
do not, and the same files can then be served under several names (a CDN, a proxy).

It is incremental: package files are copied only when the manifest
(``.export-manifest.json``) does not already list them with the same hash, documents
are rewritten only when their bytes change (mirrors' caches stay valid), and what the
feed no longer holds (deleted versions and ids) is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server_shim.store import feed_catalog as catalog
from server_shim.store.database import Database
from server_shim.store.feed_staging import hash_copy
from server_shim.store.feed_store import FeedCorrupt, FeedError, file_path, flat_path, packages
from tentacle.common.atomicfile import write_private
from tentacle.protocol import nuget_documents as documents
from tentacle.protocol.nuget_documents import SEMVER1_HIVE, SEMVER2_HIVE, CatalogEntry, FeedUrls
from tentacle.protocol.plan import PackageRef

MANIFEST_FILE = ".export-manifest.json"
FLAT = "flatcontainer/"


@dataclass(frozen=True)
class ExportReport:
    """What an export did."""

    packages: int
    copied: int
    skipped: int
    bytes_copied: int
    base_url: str


def base_url_of(text: str) -> str:
    """The base URL, checked, ending with '/'; FeedError naming --base-url otherwise."""
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid or parts.query or parts.fragment:
        raise FeedError(f"--base-url {text!r}: must be an http(s) URL without ?query or #fragment")
    return text.rstrip("/") + "/"


def _load_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The files an earlier export wrote; anything unreadable means 'none'."""
    try:
        files = json.loads((out_dir / MANIFEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return files if isinstance(files, dict) else {}


def _write_if_changed(path: Path, document: object) -> None:
    data = (json.dumps(document, indent=2) + "\n").encode()
    try:
        if path.read_bytes() == data:
            return  # unchanged: keep its mtime, so mirrors' caches stay valid
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, data, 0o644)


def _is_current(target: Path, entry: object, ref: PackageRef) -> bool:
    if entry != {"sha512": ref.sha512, "size": ref.size}:
        return False
    try:
        return target.stat().st_size == ref.size
    except OSError:
        return False


def _copy_verified(source: Path, target: Path, ref: PackageRef) -> None:
    """Copy a stored package to `target` via a temp file, checking it against its hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".export-")
    try:
        os.fchmod(fd, 0o644)  # the export is meant to be served by a web server's own user
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            sha512, size = hash_copy(src, out, ref.size)
        if (sha512, size) != (ref.sha512, ref.size):
            raise FeedCorrupt(f"{source}: does not match the sha512 recorded when it was pushed")
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _export_files(feed_dir: Path, out_dir: Path, refs: list[PackageRef]) -> tuple[int, int]:
    """Copy what the manifest lacks, drop what the feed no longer has; (files copied, bytes copied)."""
    manifest = _load_manifest(out_dir)
    wanted = {FLAT + flat_path(ref): ref for ref in refs}
    copied = copied_bytes = 0
    try:
        for relative in [name for name in manifest if name not in wanted]:
            (out_dir / relative).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the version's folder, once empty
                (out_dir / relative).parent.rmdir()
            del manifest[relative]
        for relative, ref in wanted.items():
            if _is_current(out_dir / relative, manifest.get(relative), ref):
                continue
            try:
                _copy_verified(file_path(feed_dir, ref), out_dir / relative, ref)
            except FileNotFoundError as exc:
                raise FeedCorrupt(f"{exc.filename}: stored package file is missing") from exc
            manifest[relative] = {"sha512": ref.sha512, "size": ref.size}
            copied, copied_bytes = copied + 1, copied_bytes + ref.size
    finally:
        # Even after a failure, so that the files already copied are not copied again.
        _write_if_changed(out_dir / MANIFEST_FILE, {"format": 1, "files": manifest})
    return copied, copied_bytes


def _registration_files(entries: list[CatalogEntry], urls: FeedUrls, semver2: bool) -> dict[str, object]:
    """Every document of one id in one hive, by path relative to the id's folder."""
    files: dict[str, object] = {"index.json": documents.registration_index(entries, urls, semver2)}
    if len(entries) >= documents.INLINE_LIMIT:
        for start, end in documents.page_bounds(entries):
            page = entries[start:end]
            name = f"page/{page[0].version.lower()}/{page[-1].version.lower()}.json"
            files[name] = documents.registration_page(page, urls, semver2)
    for entry in entries:
        files[f"{entry.version.lower()}.json"] = documents.registration_leaf(entry, urls, semver2)
    return files


def _replace_folder_documents(folder: Path, files: dict[str, object]) -> None:
    """Write `files` under `folder` and remove the .json files there that are not among them."""
    for name, document in files.items():
        _write_if_changed(folder / name, document)
    for path in folder.rglob("*.json"):
        if str(path.relative_to(folder)) not in files:
            path.unlink()


def _remove_other_folders(parent: Path, keep: set[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        for child in parent.iterdir():
            if child.is_dir() and child.name not in keep:
                shutil.rmtree(child)


def _export_documents(db: Database, out_dir: Path, refs: list[PackageRef], urls: FeedUrls) -> None:
    by_id = _write_flat_indexes(out_dir, refs)
    for semver2, hive in ((True, SEMVER2_HIVE), (False, SEMVER1_HIVE)):
        shown = set()
        for lower_id in by_id:
            entries = db.sync(catalog.entries, lower_id, semver2)
            if entries:
                files = _registration_files(entries, urls, semver2)
                _replace_folder_documents(out_dir / hive / lower_id, files)
                shown.add(lower_id)
        _remove_other_folders(out_dir / hive, shown)
    _write_if_changed(out_dir / "index.json", documents.service_index(urls))


def _write_flat_indexes(out_dir: Path, refs: list[PackageRef]) -> dict[str, list[str]]:
    """Each id's version list in the flat container (and no folder of an id gone); versions by id."""
    by_id: dict[str, list[str]] = {}
    for ref in refs:
        by_id.setdefault(ref.id.lower(), []).append(ref.version)
    for lower_id, version_list in by_id.items():
        _write_if_changed(out_dir / FLAT / lower_id / "index.json", documents.versions_index(version_list))
    _remove_other_folders(out_dir / FLAT, set(by_id))
    return by_id


def _relative_documents(out_dir: Path, refs: list[PackageRef]) -> None:
    """The flat container's indexes and a service index naming it relatively (tentacles only)."""
    _write_flat_indexes(out_dir, refs)
    resource = {"@id": FLAT, "@type": "PackageBaseAddress/3.0.0", "comment": "Package files by lowercase id"}
    _write_if_changed(out_dir / "index.json", {"version": "3.0.0", "resources": [resource]})


def export(db: Database, feed_dir: Path, out_dir: Path, base_url: str | None) -> ExportReport:
    """Write (or bring up to date) a static NuGet v3 feed of the built-in feed in `out_dir`.

    `base_url` is where `out_dir` will be served; None writes the relative, tentacle-only form.
    """
    base = None if base_url is None else base_url_of(base_url)
    refs = db.sync(packages)
    out_dir.mkdir(parents=True, exist_ok=True)
    copied, copied_bytes = _export_files(feed_dir, out_dir, refs)
    if base is None:
        _relative_documents(out_dir, refs)
    else:
        _export_documents(db, out_dir, refs, FeedUrls(base))
    return ExportReport(len(refs), copied, len(refs) - copied, copied_bytes, base or "(relative)")
