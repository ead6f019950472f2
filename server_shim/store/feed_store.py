"""The built-in feed's package store, its static NuGet v3 export, and named mirror feeds.

How it works. A package is known by its id (case-insensitively) and its NuGet version
(by NuGet's equality: ``1.0`` is ``1.0.0``, labels ignore case); its bytes never change.
`push` copies the file into a temp file inside the feed folder while hashing it (SHA-512)
and counting its size, fsyncs it, reads the id and version *from that copy* (so what is
recorded is exactly what was hashed), then, in the database transaction that records it,
renames it into the flat-container layout::

    <state>/feed/{lowerid}/{lowerversion}/{lowerid}.{lowerversion}.nupkg|.zip|.tar.gz

A file without a row (a crash between rename and commit) is harmless: nothing refers to
it and the next push of that version replaces it. `export` writes the same layout as a
static feed any web server can serve, copying only what its manifest does not already
list. Mirror feeds are named lists of NuGet v3 service index URLs.

Errors::

    TentacleError
    ├── PackageError       400  a file we will not take (kind, size, nuspec, name)
    ├── PackageConflict    409  that id and version exist with other bytes
    ├── PackageNotFound    404  no such package or version in the built-in feed
    ├── FeedCorrupt        500  a stored file no longer matches its recorded hash
    └── FeedError          400  a bad mirror feed definition or export base URL (exit 2)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from server_shim.store.database import Database
from tentacle.common.atomicfile import fsync_directory, write_private
from tentacle.errors import Conflict, InvalidInput, NotFound, StorageError
from tentacle.protocol.identity import check_name
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion, is_valid_package_id, newest
from tentacle.protocol.nuspec import MAX_NUSPEC_BYTES, NuspecError, parse_nuspec
from tentacle.protocol.plan import MAX_URL, PackageRef
from tentacle.protocol.process import BUILTIN_FEED

FEED_FOLDER = "feed"
MAX_PACKAGE_BYTES = 16 * 1024**3
MAX_NUPKG_ENTRIES = 65_536
MANIFEST_FILE = ".export-manifest.json"
_CHUNK = 1024 * 1024
# Accepted endings and the one each is stored under, longest first.
_KINDS = ((".tar.gz", ".tar.gz"), (".nupkg", ".nupkg"), (".zip", ".zip"), (".tgz", ".tar.gz"))
_VERSION_START = re.compile(r"\.(?=[0-9])")
_GZIP_MAGIC = b"\x1f\x8b"


class PackageError(InvalidInput):
    """A file the feed will not take; the message names the file and why."""


class PackageConflict(Conflict):
    """That id and version are in the feed with different bytes."""


class PackageNotFound(NotFound):
    """No such package, or no such version of it, in the built-in feed."""


class FeedCorrupt(StorageError):
    """A stored package file no longer matches the hash recorded at push."""


class FeedError(InvalidInput):
    """A mirror feed definition or export base URL that cannot be used."""

    exit_code = 2


def store_dir(state: Path) -> Path:
    """The built-in feed's folder inside an instance's state folder."""
    return state / FEED_FOLDER


# --- names and paths ----------------------------------------------------------------------


def _kind(name: str) -> tuple[str, str]:
    """(name without its ending, the ending the feed stores it under)."""
    lower = name.lower()
    for ending, stored in _KINDS:
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], stored
    raise PackageError(f"{name}: not a package file (.nupkg, .zip, .tar.gz or .tgz)")


def split_file_name(name: str) -> tuple[str, NuGetVersion]:
    """The id and version of a file named ``ID.VERSION.ext`` ('My.Pkg.1.2.3-beta.1.tar.gz').

    The version starts at the first '.' followed by a digit where the rest is a version
    and what comes before is a package id.
    """
    stem, ending = _kind(name)
    for match in _VERSION_START.finditer(stem):
        package_id, text = stem[: match.start()], stem[match.end() :]
        if not is_valid_package_id(package_id):
            continue
        try:
            return package_id, NuGetVersion.parse(text)
        except InvalidVersion:
            continue
    raise PackageError(
        f"{name}: cannot tell the package id from the version; name the file ID.VERSION{ending}"
        f" (for example My.App.1.2.3{ending})"
    )


def flat_path(ref: PackageRef) -> str:
    """The file's path relative to a PackageBaseAddress: '{lowerid}/{lowerversion}/{file}'."""
    return f"{ref.id.lower()}/{ref.version.lower()}/{ref.file_name}"


def file_path(feed_dir: Path, ref: PackageRef) -> Path:
    """Where the built-in feed keeps the file of `ref`."""
    return feed_dir / flat_path(ref)


# --- files ----------------------------------------------------------------------------------


def _copy_hashed(source: BinaryIO, target: BinaryIO, limit: int) -> tuple[str, int]:
    """Copy at most `limit` + 1 bytes, fsynced; returns (sha512 hex, bytes copied)."""
    digest, size = hashlib.sha512(), 0
    while size <= limit and (chunk := source.read(_CHUNK)):
        size += len(chunk)
        digest.update(chunk)
        target.write(chunk)
    target.flush()
    os.fsync(target.fileno())
    return digest.hexdigest(), size


@dataclass(frozen=True)
class _Staged:
    """A copy of a pushed file in the feed folder, hashed."""

    path: Path
    sha512: str
    size: int


def _stage(feed_dir: Path, file: Path, limit: int) -> _Staged:
    fd, name = tempfile.mkstemp(dir=feed_dir, prefix=".push-")
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as target, file.open("rb") as source:
            sha512, size = _copy_hashed(source, target, limit)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise PackageError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    if size > limit:
        staged.unlink()
        raise PackageError(f"{file.name}: larger than the {limit} bytes a package may have")
    return _Staged(staged, sha512, size)


def _read_nuspec(path: Path, name: str) -> bytes:
    """The bytes of the one .nuspec at the root of a .nupkg."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_NUPKG_ENTRIES:
                raise PackageError(f"{name}: more than {MAX_NUPKG_ENTRIES} entries")
            found = [e for e in entries if re.fullmatch(r"[^/\\]+\.nuspec", e.filename, re.IGNORECASE)]
            if len(found) != 1:
                where = "no .nuspec" if not found else f"{len(found)} .nuspec files"
                raise PackageError(f"{name}: a .nupkg needs exactly one .nuspec at its root; it has {where}")
            with archive.open(found[0]) as member:
                return member.read(MAX_NUSPEC_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise PackageError(f"{name}: not a readable .nupkg (zip) file: {exc}") from exc


def _identify(staged: Path, name: str, ending: str) -> tuple[str, NuGetVersion]:
    """The id and version of a staged file: from its nuspec, or from its name."""
    if ending == ".nupkg":
        try:
            info = parse_nuspec(_read_nuspec(staged, name))
            return info.id, NuGetVersion.parse(info.version)
        except (NuspecError, InvalidVersion) as exc:
            raise PackageError(f"{name}: {exc.message}") from exc
    with staged.open("rb") as handle:
        head = handle.read(4)
    if ending == ".zip" and not zipfile.is_zipfile(staged):
        raise PackageError(f"{name}: not a zip file")
    if ending == ".tar.gz" and not head.startswith(_GZIP_MAGIC):
        raise PackageError(f"{name}: not a gzip-compressed tar file")
    return split_file_name(name)


# --- the store ------------------------------------------------------------------------------


def _ref(row: sqlite3.Row) -> PackageRef:
    return PackageRef(row["id"], row["version"], row["sha512"], row["size"], row["file_name"])


def _by_version(conn: sqlite3.Connection, package_id: str) -> dict[NuGetVersion, PackageRef]:
    rows = conn.execute("SELECT * FROM packages WHERE lower_id = ?", (package_id.lower(),))
    return {NuGetVersion.parse(row["version"]): _ref(row) for row in rows}


def _record(conn: sqlite3.Connection, feed_dir: Path, ref: PackageRef, staged: Path) -> PackageRef:
    """Insert the row and move the file in; the same bytes again change nothing."""
    existing = _by_version(conn, ref.id).get(NuGetVersion.parse(ref.version))
    if existing is not None:
        if existing.sha512 == ref.sha512:
            return existing
        raise PackageConflict(
            f"{existing.id} {existing.version} is already in the built-in feed with other content"
            f" (sha512 {existing.sha512[:16]}..., {existing.size} bytes); a version's bytes never"
            " change: push it as a new version",
            details={"packageId": existing.id, "version": existing.version},
        )
    target = file_path(feed_dir, ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)
    fsync_directory(target.parent)
    conn.execute(
        "INSERT INTO packages VALUES (?, ?, ?, ?, ?, ?, ?)",
        (ref.id.lower(), ref.version, ref.id, ref.sha512, ref.size, ref.file_name, time.time()),
    )
    return ref


def push(db: Database, feed_dir: Path, file: Path, *, max_bytes: int = MAX_PACKAGE_BYTES) -> PackageRef:
    """Add a .nupkg, .zip or .tar.gz/.tgz file to the built-in feed; returns what is stored."""
    _, ending = _kind(file.name)
    feed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = _stage(feed_dir, file, max_bytes)
    try:
        package_id, version = _identify(staged.path, file.name, ending)
        lower = f"{package_id.lower()}.{version.flat_container_form}"
        ref = PackageRef(package_id, str(version), staged.sha512, staged.size, lower + ending)
        return db.sync(_record, feed_dir, ref, staged.path)
    finally:
        staged.path.unlink(missing_ok=True)


def resolve(conn: sqlite3.Connection, package_id: str, version: str | None) -> PackageRef:
    """That exact version, or with None the newest stable (the newest prerelease if none is)."""
    known = _by_version(conn, package_id)
    if version is None:
        found = newest(known) or newest(known, include_prerelease=True)
        if found is None:
            raise PackageNotFound(
                f"package {package_id} is not in the built-in feed", details={"packageId": package_id}
            )
        return known[found]
    ref = known.get(NuGetVersion.parse(version))
    if ref is None:
        raise PackageNotFound(
            f"package {package_id} version {version} is not in the built-in feed",
            details={"packageId": package_id, "version": version},
        )
    return ref


def versions(conn: sqlite3.Connection, package_id: str) -> list[str]:
    """Every version of the package in the feed (normalized), in NuGet order; [] if none."""
    known = _by_version(conn, package_id)
    return [known[version].version for version in sorted(known)]


def packages(conn: sqlite3.Connection) -> list[PackageRef]:
    """Every package file of the built-in feed, by id then NuGet version."""
    rows = conn.execute("SELECT * FROM packages ORDER BY lower_id")
    return sorted((_ref(row) for row in rows), key=lambda r: (r.id.lower(), NuGetVersion.parse(r.version)))


# --- mirror feeds ----------------------------------------------------------------------------


def _mirror_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        valid = parts.scheme == "https" and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid or len(url) > MAX_URL or any(c.isspace() for c in url):
        raise FeedError(f"mirror {url!r}: must be the https:// URL of a NuGet v3 service index")
    if parts.username is not None or parts.fragment:
        raise FeedError(f"mirror {url!r}: no credentials or #fragment (tentacles use their certificates)")
    return url


def add_feed(conn: sqlite3.Connection, name: str, mirrors: list[str]) -> None:
    """Name a feed of mirror candidates (service index URLs); re-adding a name replaces it."""
    try:
        check_name("feed", name)
    except ValueError as exc:
        raise FeedError(str(exc)) from exc
    if name.lower() == BUILTIN_FEED:
        raise FeedError(f"feed {name!r}: the name {BUILTIN_FEED!r} is reserved for the built-in feed")
    if not mirrors:
        raise FeedError(f"feed {name!r}: needs at least one mirror URL")
    urls = list(dict.fromkeys(_mirror_url(url) for url in mirrors))
    conn.execute("INSERT OR REPLACE INTO feeds VALUES (?, ?, ?)", (name, json.dumps(urls), time.time()))


def feed_mirrors(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Every named mirror feed and its URLs, by name."""
    rows = conn.execute("SELECT name, mirrors FROM feeds ORDER BY name")
    return {row["name"]: list(json.loads(row["mirrors"])) for row in rows}


# --- static export ---------------------------------------------------------------------------


def service_index(package_base_address: str) -> dict[str, Any]:
    """A NuGet v3 service index whose one resource is the flat container."""
    return {
        "version": "3.0.0",
        "resources": [
            {
                "@id": package_base_address,
                "@type": "PackageBaseAddress/3.0.0",
                "comment": "Package files, by lowercase id and normalized version",
            }
        ],
    }


def versions_index(version_list: Iterable[str]) -> dict[str, Any]:
    """A flat container versions index: lowercase, in the order given."""
    return {"versions": [version.lower() for version in version_list]}


@dataclass(frozen=True)
class ExportReport:
    """What an export did."""

    packages: int
    copied: int
    skipped: int
    bytes_copied: int


def _base_address(base_url: str | None) -> str:
    if base_url is None:
        return "flatcontainer/"
    try:
        parts = urlsplit(base_url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid or parts.query or parts.fragment:
        raise FeedError(f"--base-url {base_url!r}: must be an http(s) URL without ?query or #fragment")
    return base_url.rstrip("/") + "/flatcontainer/"


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
            sha512, size = _copy_hashed(src, out, ref.size)
        if (sha512, size) != (ref.sha512, ref.size):
            raise FeedCorrupt(f"{source}: does not match the sha512 recorded when it was pushed")
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _export_files(feed_dir: Path, out_dir: Path, refs: list[PackageRef]) -> tuple[int, int]:
    """Copy what the manifest lacks; returns (files copied, bytes copied)."""
    manifest = _load_manifest(out_dir)
    copied = copied_bytes = 0
    try:
        for ref in refs:
            relative = "flatcontainer/" + flat_path(ref)
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


def export(db: Database, feed_dir: Path, out_dir: Path, base_url: str | None = None) -> ExportReport:
    """Write (or bring up to date) a static NuGet v3 feed of the built-in feed in `out_dir`."""
    base_address = _base_address(base_url)
    refs = db.sync(packages)
    out_dir.mkdir(parents=True, exist_ok=True)
    copied, copied_bytes = _export_files(feed_dir, out_dir, refs)
    by_id: dict[str, list[str]] = {}
    for ref in refs:
        by_id.setdefault(ref.id.lower(), []).append(ref.version)
    for lower_id, version_list in by_id.items():
        _write_if_changed(out_dir / "flatcontainer" / lower_id / "index.json", versions_index(version_list))
    _write_if_changed(out_dir / "index.json", service_index(base_address))
    return ExportReport(len(refs), copied, len(refs) - copied, copied_bytes)
