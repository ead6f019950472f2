"""Projects and releases in the database.

A project is its validated process document, stored in normalized form (what
`Process.to_json` gives). A release freezes two things at creation: a copy of the
process, and one exact package file (`PackageRef`) for every package id the process
uses, in its steps and its runbooks, so that a later edit of the project or a newer
package in the feed never changes what a release deploys.

Sensitive variable values are sealed in both documents (`server_shim.store.sealing`) and
opened as they are read. `keep_secrets` gives a new document the stored values of the
sensitive variables it names without a value: the API never shows them, so an operator
who edits what `GET` gave puts back a document without them.

Release versions are NuGet versions, stored normalized (``1.0`` is ``1.0.0``); two
versions NuGet calls equal (``1.0.0-Beta`` and ``1.0.0-beta``) are the same release.
Errors, each with the HTTP status the API answers::

    ProjectNotFound      404   no project of that name in the space
    ReleaseNotFound      404   no release of that version
    ReleaseExists        409   the version is taken
    ReleaseRequestError  400   a bad version text or a package the process does not use
    PackageMissing       404   the feed lacks a given version, or any version of a package

A release is made in a channel and remembers it; server_shim.store.release_channels picks
its package versions by the channel's rules and its version when none is given (and
raises ChannelNotFound, ChannelRuleBroken, PackageMissing, ReleaseVersionNeeded).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from server_shim.store import events, sealing
from server_shim.store import release_channels as channels
from server_shim.store.release_channels import PackageMissing as PackageMissing
from server_shim.store.sealing import Sealer
from tentacle.errors import Conflict, InvalidInput, NotFound
from tentacle.protocol.channel_rules import DEFAULT_CHANNEL
from tentacle.protocol.documents import NAME_MAX, key_path, text_problem
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion
from tentacle.protocol.plan import PackageRef
from tentacle.protocol.process import Process, ProcessError, Variable, parse_process

MAX_VERSION_CHARS = 100


class ProjectNotFound(NotFound):
    """No project of that name in the space."""


class ReleaseNotFound(NotFound):
    """No release of that version in the project."""


class ReleaseExists(Conflict):
    """A release of that version already exists."""


class ReleaseRequestError(InvalidInput):
    """The release request is wrong where only the release rules can tell; names the path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}", details={"path": path})


@dataclass(frozen=True)
class Release:
    """A project's process and package versions, frozen under a version."""

    project: str
    version: str
    process: Process
    packages: dict[str, PackageRef]
    channel: str = DEFAULT_CHANNEL


def put_project(
    conn: sqlite3.Connection, space: str, name: str, process: Process, unsent: Sequence[int] = ()
) -> bool:
    """Create or replace the project's process; True when it was created.

    ``unsent`` are the indexes of sensitive variables sent without their value: each keeps
    the stored value of the same name and scopes (`keep_secrets`).
    """
    if process.name != name:
        raise ValueError(f"process {process.name!r} stored under the name {name!r}")
    process = keep_secrets(conn, space, name, process, unsent)
    document = json.dumps(sealing.seal(conn, process.to_json()))
    created = _project_row(conn, space, name) is None
    conn.execute(
        "INSERT INTO projects (space, name, document, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (space, name) DO UPDATE SET document = excluded.document,"
        " updated_at = excluded.updated_at",
        (space, name, document, time.time()),
    )
    events.record(conn, "projectUpdated", space, project=name, details={"created": created})
    return created


def keep_secrets(
    conn: sqlite3.Connection, space: str, name: str, process: Process, unsent: Sequence[int]
) -> Process:
    """``process`` with each sensitive variable at ``unsent`` given its stored value.

    The stored variable is the one of the same name, sensitive, with the same scopes
    (environments, roles, machines); each stored value is used once. A variable with no
    such stored one is refused, naming its path: it needs its value.
    """
    if not unsent:
        return process
    row = _project_row(conn, space, name) if _storable(name) else None
    stored = parse_process(sealing.unseal(conn, json.loads(row["document"])), name).variables if row else ()
    pool = [variable for variable in stored if variable.sensitive]
    variables = list(process.variables)
    problems: list[tuple[str, str]] = []
    for index in unsent:
        wanted = variables[index]
        match = next((v for v in pool if _same_slot(v, wanted)), None)
        if match is None:
            problems.append(
                (
                    f"variables[{index}].value",
                    f"required: no stored sensitive value of {wanted.name!r} with these scopes to keep",
                )
            )
            continue
        pool.remove(match)
        variables[index] = msgspec.structs.replace(wanted, value=match.value)
    if problems:
        raise ProcessError(problems)
    return msgspec.structs.replace(process, variables=tuple(variables))


def _same_slot(a: Variable, b: Variable) -> bool:
    """Whether two variables are the same name with the same scopes."""
    return (a.name, set(a.environments), set(a.roles), set(a.machines)) == (
        b.name,
        set(b.environments),
        set(b.roles),
        set(b.machines),
    )


def get_project(conn: sqlite3.Connection, space: str, name: str) -> Process:
    """The project's process; ProjectNotFound when there is none."""
    return _project_document(conn, space, name)[1]


def _project_document(conn: sqlite3.Connection, space: str, name: str) -> tuple[str, Process]:
    """The project's stored document text and its process."""
    row = _project_row(conn, space, name) if _storable(name) else None
    if row is None:
        raise ProjectNotFound(f"project {_shown(name)} does not exist in space {_shown(space)}")
    return row["document"], _process_of(conn, row["document"], name)


def _process_of(conn: sqlite3.Connection, document: str, name: str) -> Process:
    """The process of a stored document text, its sealed values opened: parsed once per text."""
    return _stored_process(document, name, sealing.of(conn))


@functools.lru_cache(maxsize=512)
def _stored_process(document: str, name: str, sealer: Sealer | None) -> Process:
    """A stored (normalized, sealed) document's process; every create reads one.

    `Process` is immutable, so one parsed value serves every caller with the same text.
    """
    return parse_process(sealing.opened(sealer, json.loads(document)), name)


def _storable(text: str) -> bool:
    """Whether ``text`` can be a stored name at all (SQLite refuses unpaired surrogates)."""
    return text_problem(text) is None and len(text) <= NAME_MAX


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut short: messages must not echo megabytes back."""
    return repr(text if len(text) <= NAME_MAX else text[:NAME_MAX] + "...")


def _project_row(conn: sqlite3.Connection, space: str, name: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT document FROM projects WHERE space = ? AND name = ?", (space, name)
    ).fetchone()
    return row


def create_release(
    conn: sqlite3.Connection,
    space: str,
    project: str,
    version: str | None,
    package_versions: Mapping[str, str] | None,
    channel: str = DEFAULT_CHANNEL,
    ignore_channel_rules: bool = False,
) -> Release:
    """Freeze the project's process with exact package versions under ``version``, in ``channel``.

    Each package id the process uses gets the version in ``package_versions`` (ids
    match case-insensitively, as NuGet's do), else the newest in the feed that the
    channel's rules allow. Without ``version``, the next one is made (release_channels).
    """
    given = None if version is None else str(_release_version(version))
    document, process = _project_document(conn, space, project)
    chosen = channels.channel_of(process, channel)
    if given is not None and _release_row(conn, space, project, given) is not None:
        raise ReleaseExists(
            f"releaseVersion: release {given!r} of project {project!r} already exists",
            details={"path": "releaseVersion", "releaseVersion": given},
        )
    wanted = _wanted_versions(process.package_ids(), package_versions or {})
    packages = channels.resolve_packages(conn, chosen, wanted, ignore_channel_rules)
    normalized = given or channels.next_version(conn, space, process, chosen, packages)
    if given is None and _release_row(conn, space, project, normalized) is not None:
        raise ReleaseExists(
            f"releaseVersion: release {normalized!r} of project {project!r} already exists (made from"
            f" {'the versionTemplate' if process.version_template else 'the newest package version'});"
            " give releaseVersion",
            details={"path": "releaseVersion", "releaseVersion": normalized},
        )
    release = Release(project, normalized, process, packages, chosen.name)
    conn.execute(
        "INSERT INTO releases (space, project, version, process, packages, created_at, channel)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            space,
            project,
            normalized,
            document,  # normalized already (put_project stores `to_json`)
            _packages_json(release),
            time.time(),
            chosen.name,
        ),
    )
    pinned = {"channel": chosen.name, "packages": {ref.id: ref.version for ref in packages.values()}}
    events.record(conn, "releaseCreated", space, project=project, release=normalized, details=pinned)
    return release


def get_release(conn: sqlite3.Connection, space: str, project: str, version: str) -> Release:
    """The release of that version (any NuGet-equal spelling); ReleaseNotFound else."""
    get_project(conn, space, project)  # an unknown project is reported as such
    try:
        row = _release_row(conn, space, project, str(NuGetVersion.parse(version)))
    except InvalidVersion:
        row = None  # no release has an unparsable version
    if row is None:
        raise ReleaseNotFound(f"release {_shown(version)} of project {_shown(project)} does not exist")
    return _release_from_row(conn, row)


def latest_release(conn: sqlite3.Connection, space: str, project: str) -> Release | None:
    """The project's release with the highest version (NuGet ordering), or None."""
    rows = conn.execute("SELECT * FROM releases WHERE space = ? AND project = ?", (space, project)).fetchall()
    if not rows:
        return None
    return _release_from_row(conn, max(rows, key=lambda row: NuGetVersion.parse(row["version"])))


def _release_row(conn: sqlite3.Connection, space: str, project: str, version: str) -> sqlite3.Row | None:
    # Normalized versions differ only in the case of their labels when NuGet calls them equal.
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM releases WHERE space = ? AND project = ? AND lower(version) = lower(?)",
        (space, project, version),
    ).fetchone()
    return row


def _release_from_row(conn: sqlite3.Connection, row: sqlite3.Row) -> Release:
    packages = {
        key: PackageRef(p["id"], p["version"], p["sha512"], p["size"], p["fileName"])
        for key, p in json.loads(row["packages"]).items()
    }
    process = _process_of(conn, row["process"], row["project"])
    return Release(row["project"], row["version"], process, packages, row["channel"])


def _packages_json(release: Release) -> str:
    return json.dumps(
        {
            key: {
                "id": ref.id,
                "version": ref.version,
                "sha512": ref.sha512,
                "size": ref.size,
                "fileName": ref.file_name,
            }
            for key, ref in release.packages.items()
        }
    )


def _release_version(text: str) -> NuGetVersion:
    version = _parse_version(text)
    if isinstance(version, str):
        raise ReleaseRequestError("releaseVersion", version)
    return version


def _parse_version(text: str) -> NuGetVersion | str:
    """The version, or why ``text`` is not one."""
    issue = text_problem(text)
    if issue is not None:
        return issue
    if len(text) > MAX_VERSION_CHARS:
        return f"must be at most {MAX_VERSION_CHARS} characters"
    try:
        return NuGetVersion.parse(text)
    except InvalidVersion as exc:
        return f"must be a NuGet version: {exc.message}"


def _wanted_versions(used: Iterable[str], given: Mapping[str, str]) -> dict[str, str | None]:
    """Each used package id with its requested version (None: the newest)."""
    by_lower = {package_id.lower(): package_id for package_id in used}
    wanted: dict[str, str | None] = dict.fromkeys(by_lower.values())
    seen: set[str] = set()
    for package_id, text in given.items():
        target = by_lower.get(package_id.lower())
        path = key_path("packageVersions", package_id) if _storable(package_id) else "packageVersions"
        if target is None:
            names = ", ".join(sorted(by_lower.values())) or "none"
            raise ReleaseRequestError(
                path, f"the process uses no package {_shown(package_id)} (it uses: {names})"
            )
        if target in seen:
            raise ReleaseRequestError(path, f"package {target!r} is given twice")
        seen.add(target)
        version = _parse_version(text)
        if isinstance(version, str):
            raise ReleaseRequestError(path, version)
        wanted[target] = str(version)
    return wanted
