"""The built-in feed's package store, and named mirror feeds.

How it works. A package is known by its id (case-insensitively) and its NuGet version
(by NuGet's equality: ``1.0`` is ``1.0.0``, labels ignore case); its bytes never change.
A push (`push` from a file, or the API's upload) lands in a locked staging file inside the
feed folder (feed_staging) while it is hashed (SHA-512) and counted, is fsynced, and is
identified *from that copy* (package_checks: so what is recorded is exactly what was
hashed and checked); then, in the database transaction that records it, it is renamed into
the flat-container layout::

    <state>/feed/{lowerid}/{lowerversion}/{lowerid}.{lowerversion}.nupkg|.zip|.tar.gz

A file without a row (a crash between rename and commit, or a delete between commit and
unlink) is harmless: nothing refers to it and the next push of that version replaces it.
A staging file left by a crash or ``kill -9`` is removed when the server starts and before
the next push (`prepare`, `push`). Mirror feeds are named lists of NuGet v3 service index URLs,
each in a space (the built-in feed's packages are the server's, shared by every space).

Deleting a version (`delete_version`) removes it, unless a release pins it: then it is
refused with the releases named, since deploying them needs those exact bytes.

Errors::

    TentacleError
    ├── PackageError       400  a file we will not take (kind, size, nuspec, members, name)
    ├── PackageTooLarge    413  a file over the feed's size limit
    ├── PackageConflict    409  that id and version exist (with other bytes, or at all for uploads)
    ├── PackagePinned      409  a release pins the version that was to be deleted
    ├── PackageNotFound    404  no such package or version in the built-in feed
    ├── FeedCorrupt        500  a stored file no longer matches its recorded hash
    └── FeedError          400  a bad mirror feed definition or export base URL (exit 2)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from server_shim.store import events, spaces
from server_shim.store import feed_catalog as catalog
from server_shim.store.database import Database
from server_shim.store.feed_staging import Staged, clean_stale, stage_file

# PackageError and split_file_name are re-exported (`as`): callers catch and use them from here.
from server_shim.store.package_checks import Identified, identify, kind_of
from server_shim.store.package_checks import PackageError as PackageError
from server_shim.store.package_checks import split_file_name as split_file_name
from server_shim.store.spaces import DEFAULT_SPACE
from tentacle.common.atomicfile import fsync_directory
from tentacle.errors import Conflict, InvalidInput, NotFound, StorageError, TooLarge
from tentacle.protocol.identity import check_name
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion, newest
from tentacle.protocol.plan import MAX_URL, PackageRef
from tentacle.protocol.process import BUILTIN_FEED

FEED_FOLDER = "feed"
MAX_PACKAGE_BYTES = 16 * 1024**3


class PackageTooLarge(TooLarge):
    """A file over the feed's size limit."""


class PackageConflict(Conflict):
    """That id and version are in the feed already."""


class PackagePinned(Conflict):
    """A release pins the version that was to be deleted."""


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


def flat_path(ref: PackageRef) -> str:
    """The file's path relative to a PackageBaseAddress: '{lowerid}/{lowerversion}/{file}'."""
    return f"{ref.id.lower()}/{ref.version.lower()}/{ref.file_name}"


def file_path(feed_dir: Path, ref: PackageRef) -> Path:
    """Where the built-in feed keeps the file of `ref`."""
    return feed_dir / flat_path(ref)


# --- recording --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A staged, identified file, ready to be recorded."""

    staged: Staged
    identified: Identified

    @property
    def ref(self) -> PackageRef:
        """What the feed will hold."""
        found = self.identified
        lower = f"{found.id.lower()}.{found.version.flat_container_form}"
        return PackageRef(
            found.id, str(found.version), self.staged.sha512, self.staged.size, lower + found.ending
        )


def candidate(staged: Staged, name: str) -> Candidate:
    """Identify a staged file pushed as `name` (blocking: reads the file)."""
    return Candidate(staged, identify(staged.path, name))


def _ref(row: sqlite3.Row) -> PackageRef:
    return PackageRef(row["id"], row["version"], row["sha512"], row["size"], row["file_name"])


def _by_version(conn: sqlite3.Connection, package_id: str) -> dict[NuGetVersion, PackageRef]:
    rows = conn.execute(
        "SELECT id, version, sha512, size, file_name FROM packages WHERE lower_id = ?", (package_id.lower(),)
    )
    return {_parsed(row["version"]): _ref(row) for row in rows}


@functools.lru_cache(maxsize=65536)
def _parsed(version: str) -> NuGetVersion:
    """A stored (normalized) version, parsed once: every release resolves every version of its ids."""
    return NuGetVersion.parse(version)


def refs_by_version(conn: sqlite3.Connection, package_id: str) -> dict[NuGetVersion, PackageRef]:
    """Every file of the package (id case-insensitive) by its version; {} when there is none."""
    return _by_version(conn, package_id)


def _conflict(existing: PackageRef, identical: bool) -> PackageConflict:
    why = "with the same content" if identical else "with other content"
    return PackageConflict(
        f"{existing.id} {existing.version} is already in the built-in feed ({why}); a version's bytes"
        " never change: push it as a new version",
        details={"packageId": existing.id, "version": existing.version, "sha512": existing.sha512},
    )


def record(conn: sqlite3.Connection, feed_dir: Path, found: Candidate, allow_identical: bool) -> PackageRef:
    """Insert the row and move the file in (call in a transaction).

    The same id, version and bytes again is a no-op with `allow_identical` (`package push`
    is idempotent), else a conflict (an upload: NuGet servers answer 409 for any existing version).
    """
    ref = found.ref
    existing = _by_version(conn, ref.id).get(found.identified.version)
    if existing is not None:
        if allow_identical and existing.sha512 == ref.sha512:
            return existing
        raise _conflict(existing, existing.sha512 == ref.sha512)
    target = file_path(feed_dir, ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(found.staged.path, target)
    fsync_directory(target.parent)
    version, manifest = found.identified.version, found.identified.manifest
    conn.execute(
        "INSERT INTO packages (lower_id, version, id, sha512, size, file_name, created_at,"
        " full_version, catalog, prerelease, semver2) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            *(ref.id.lower(), ref.version, ref.id, ref.sha512, ref.size, ref.file_name, time.time()),
            *(version.full_string, catalog.catalog_json(manifest), int(version.is_prerelease)),
            int(version.is_semver2),
        ),
    )
    catalog.refresh_id(conn, ref.id.lower())
    events.record(conn, "packagePushed", None, details={"packageId": ref.id, "packageVersion": ref.version})
    return ref


def push(db: Database, feed_dir: Path, file: Path, *, max_bytes: int = MAX_PACKAGE_BYTES) -> PackageRef:
    """Add a .nupkg, .zip or .tar.gz/.tgz file to the built-in feed; returns what is stored."""
    kind_of(file.name)
    clean_stale(feed_dir)
    try:
        with file.open("rb") as source:
            staging, too_large = stage_file(feed_dir, source, max_bytes)
    except OSError as exc:
        raise PackageError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    with staging:
        if too_large:
            raise PackageTooLarge(f"{file.name}: larger than the {max_bytes} bytes a package may have")
        found = candidate(staging.finish(), file.name)
        return db.sync(record, feed_dir, found, True)


def prepare(db: Database, feed_dir: Path) -> int:
    """At server start: remove stale staging files, fill in rows older than the catalog; how many."""
    clean_stale(feed_dir)
    missing = db.sync(catalog.unfilled)
    found = []
    for lower_id, version, file_name in missing:
        manifest = None
        if file_name.endswith(".nupkg"):
            ref = PackageRef(lower_id, version, "", 0, file_name)
            with contextlib.suppress(PackageError, OSError):
                manifest = identify(file_path(feed_dir, ref), file_name).manifest
        found.append((lower_id, version, manifest))
    if found:
        db.sync(catalog.fill, found)
    return len(found)


# --- reading and deleting ----------------------------------------------------------------------


def _not_found(package_id: str, version: str | None) -> PackageNotFound:
    if version is None:
        return PackageNotFound(
            f"package {package_id} is not in the built-in feed", details={"packageId": package_id}
        )
    return PackageNotFound(
        f"package {package_id} version {version} is not in the built-in feed",
        details={"packageId": package_id, "version": version},
    )


def resolve(conn: sqlite3.Connection, package_id: str, version: str | None) -> PackageRef:
    """That exact version, or with None the newest stable (the newest prerelease if none is)."""
    known = _by_version(conn, package_id)
    if version is None:
        found = newest(known) or newest(known, include_prerelease=True)
        if found is None:
            raise _not_found(package_id, None)
        return known[found]
    ref = known.get(NuGetVersion.parse(version))
    if ref is None:
        raise _not_found(package_id, version)
    return ref


def versions(conn: sqlite3.Connection, package_id: str) -> list[str]:
    """Every version of the package in the feed (normalized), in NuGet order; [] if none."""
    known = _by_version(conn, package_id)
    return [known[version].version for version in sorted(known)]


def packages(conn: sqlite3.Connection) -> list[PackageRef]:
    """Every package file of the built-in feed, by id then NuGet version."""
    rows = conn.execute("SELECT id, version, sha512, size, file_name FROM packages ORDER BY lower_id")
    return sorted((_ref(row) for row in rows), key=lambda r: (r.id.lower(), NuGetVersion.parse(r.version)))


def pinned_by(conn: sqlite3.Connection, ref: PackageRef) -> list[str]:
    """The releases that pin exactly this package file, as 'Space/Project version'."""
    rows = conn.execute(
        "SELECT space, project, version, packages FROM releases WHERE packages LIKE ?", (f"%{ref.sha512}%",)
    )
    found = []
    for row in rows:
        pinned = json.loads(row["packages"]).values()
        if any(p["sha512"] == ref.sha512 and p["id"].lower() == ref.id.lower() for p in pinned):
            found.append(f"{row['space']}/{row['project']} {row['version']}")
    return sorted(found)


def delete_version(conn: sqlite3.Connection, package_id: str, version: str) -> PackageRef:
    """Remove a version's row (call in a transaction; unlink its file after the commit)."""
    try:
        ref = resolve(conn, package_id, version)
    except InvalidVersion as exc:
        raise _not_found(package_id, version) from exc
    releases = pinned_by(conn, ref)
    if releases:
        shown = ", ".join(releases[:10]) + (f" and {len(releases) - 10} more" if len(releases) > 10 else "")
        raise PackagePinned(
            f"{ref.id} {ref.version} is pinned by {len(releases)} release(s): {shown}; deploying them needs"
            " it, so it stays",
            details={"packageId": ref.id, "version": ref.version, "releases": releases},
        )
    conn.execute("DELETE FROM packages WHERE lower_id = ? AND version = ?", (ref.id.lower(), ref.version))
    catalog.refresh_id(conn, ref.id.lower())
    return ref


def remove_file(feed_dir: Path, ref: PackageRef) -> None:
    """Remove a deleted version's file and the folders it leaves empty."""
    path = file_path(feed_dir, ref)
    path.unlink(missing_ok=True)
    for folder in (path.parent, path.parent.parent):
        with contextlib.suppress(OSError):  # not empty: another file of that version or id
            folder.rmdir()


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


def add_feed(conn: sqlite3.Connection, name: str, mirrors: list[str], space: str = DEFAULT_SPACE) -> None:
    """Name a feed of mirror candidates (service index URLs) in a space; re-adding a name replaces it."""
    try:
        check_name("feed", name)
    except ValueError as exc:
        raise FeedError(str(exc)) from exc
    if name.lower() == BUILTIN_FEED:
        raise FeedError(f"feed {name!r}: the name {BUILTIN_FEED!r} is reserved for the built-in feed")
    if not mirrors:
        raise FeedError(f"feed {name!r}: needs at least one mirror URL")
    urls = list(dict.fromkeys(_mirror_url(url) for url in mirrors))
    spaces.require(conn, space)
    conn.execute(
        "INSERT INTO space_feeds (space, name, mirrors, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (space, name) DO UPDATE SET mirrors = excluded.mirrors,"
        " updated_at = excluded.updated_at",
        (space, name, json.dumps(urls), time.time()),
    )


def feed_mirrors(conn: sqlite3.Connection, space: str = DEFAULT_SPACE) -> dict[str, list[str]]:
    """Every named mirror feed of the space and its URLs, by name."""
    rows = conn.execute("SELECT name, mirrors FROM space_feeds WHERE space = ? ORDER BY name", (space,))
    return {row["name"]: list(json.loads(row["mirrors"])) for row in rows}
