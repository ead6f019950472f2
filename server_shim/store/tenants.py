"""Tag sets and tenants of a space, and which tenants a deployment reaches.

A tag set names its tags (``Region``: ``EU``, ``US``); a tag is then called ``Region/EU``.
A tenant has tags, the projects it is connected to with the environments of each, and
variables (``{name, value, environments?, projects?, sensitive?}``, empty scopes meaning
every one). Its document is kept whole (``tenants.document``) with rows for its project
links and tags beside it, so "the tenants of this project" and "the tenants with this tag"
are index lookups. Sensitive values are sealed at rest as project variables are and never given
back: a document read back shows a sensitive variable without its value, and a document
written with a sensitive variable without a value keeps the value stored for it.

Tag filters (a deployment's ``tenantTags``, a machine's ``tenantTags``) follow Octopus:
tags of one set OR, sets AND (``Region/EU``, ``Region/US``, ``Tier/Gold`` is "EU or US, and
Gold"); see `matches`.

Errors::

    TenantNotFound   404   no tenant of that name in the space
    TagSetNotFound   404   no tag set of that name in the space
    TenantError      400   a document or tag filter naming what does not exist; ``problems``
    TagInUse         409   a tag set would drop tags that tenants or machines carry
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec
from msgspec import UNSET, UnsetType

from server_shim.store import sealing
from tentacle.errors import Conflict, NotFound
from tentacle.protocol.documents import (
    NAME_MAX,
    DocumentError,
    Name,
    Names,
    convert_document,
    key_path,
    over_bytes,
)
from tentacle.protocol.process import MAX_VALUE_BYTES, Value, Variable
from tentacle.protocol.wire import Wire

MAX_TAGS: Final = 1000
MAX_TENANT_PROJECTS: Final = 1000
MAX_TENANT_VARIABLES: Final = 5000
TAG_PART: Final = r"^[^/\x00\ud800-\udfff]+\Z"

TagPart = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=TAG_PART)]
TagName = Annotated[str, msgspec.Meta(min_length=3, max_length=201)]  # "Set/Tag"
TagNames = Annotated[tuple[TagName, ...], msgspec.Meta(max_length=MAX_TAGS)]


class TenantNotFound(NotFound):
    """No tenant of that name in the space."""


class TagSetNotFound(NotFound):
    """No tag set of that name in the space."""


class TenantError(DocumentError):
    """Tags, tag sets or projects named that do not exist; ``problems`` names each path."""


class TagInUse(Conflict):
    """A tag set would drop tags that tenants or machines still carry."""


class TagSet(Wire, frozen=True):
    """``PUT /api/{space}/tagsets/{name}/v1``: the tags of the set, in their order."""

    tags: Annotated[tuple[TagPart, ...], msgspec.Meta(max_length=MAX_TAGS)]
    name: TagPart | UnsetType = UNSET


class TenantVariable(Wire, frozen=True):
    """One value of a tenant variable, scoped to environments and projects (empty: all)."""

    name: Name
    value: Value | UnsetType = UNSET  # a sensitive one may leave it out: the stored value stays
    environments: Names = ()
    projects: Names = ()
    sensitive: bool = False

    def __repr__(self) -> str:
        """Without the value: a sensitive one must not reach a log through a repr."""
        return f"TenantVariable(name={self.name!r}, sensitive={self.sensitive!r})"

    def scope(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """What identifies this value among the tenant's (name and scopes)."""
        return (self.name, tuple(sorted(self.environments)), tuple(sorted(self.projects)))


class Tenant(Wire, frozen=True):
    """A tenant's document: tags, connected projects with their environments, variables."""

    name: Name | UnsetType = UNSET
    tags: TagNames = ()
    projects: Annotated[dict[Name, Names], msgspec.Meta(max_length=MAX_TENANT_PROJECTS)] = {}
    variables: Annotated[tuple[TenantVariable, ...], msgspec.Meta(max_length=MAX_TENANT_VARIABLES)] = ()

    def shown(self) -> Tenant:
        """The document as reads give it: sensitive values left out."""
        variables = tuple(
            msgspec.structs.replace(v, value=UNSET) if v.sensitive else v for v in self.variables
        )
        return msgspec.structs.replace(self, variables=variables)

    def variables_for(self, project: str) -> list[Variable]:
        """This tenant's variables that apply to ``project``, as process variables."""
        return [
            Variable(
                name=v.name, value=str(v.value or ""), environments=v.environments, sensitive=v.sensitive
            )
            for v in self.variables
            if not v.projects or project in v.projects
        ]


@dataclass(frozen=True)
class StoredTenant:
    """A tenant as stored: its name and document (sensitive values included)."""

    name: str
    document: Tenant


# --- tag sets ----------------------------------------------------------------------------------


def parse_tag_set(doc: object, name: str) -> TagSet:
    """The tag set document; TenantError naming the path of what is wrong."""
    tag_set = convert_document(doc, TagSet, TenantError)
    problems = list(_name_problems(name, tag_set.name))
    first: dict[str, int] = {}
    for index, tag in enumerate(tag_set.tags):
        if tag in first:
            problems.append((f"tags[{index}]", f"duplicate tag (see tags[{first[tag]}])"))
        first.setdefault(tag, index)
    if problems:
        raise TenantError(problems)
    return tag_set


def put_tag_set(conn: sqlite3.Connection, space: str, name: str, tag_set: TagSet) -> bool:
    """Create or replace a tag set; True when created. TagInUse when a dropped tag is carried."""
    old = tag_sets(conn, space).get(name)
    dropped = [f"{name}/{tag}" for tag in old or () if tag not in tag_set.tags]
    users = _tag_users(conn, space, dropped)
    if users:
        shown = "; ".join(f"{tag} by {', '.join(who)}" for tag, who in users.items())
        raise TagInUse(
            f"tags: tag set {name!r} would drop tags still in use: {shown}",
            details={"path": "tags", "inUse": users},
        )
    conn.execute(
        "INSERT INTO tag_sets (space, name, tags, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (space, name) DO UPDATE SET tags = excluded.tags, updated_at = excluded.updated_at",
        (space, name, json.dumps(list(tag_set.tags)), time.time()),
    )
    return old is None


def _tag_users(conn: sqlite3.Connection, space: str, tags: Sequence[str]) -> dict[str, list[str]]:
    """For each tag, the tenants and machines that carry it."""
    users: dict[str, list[str]] = {}
    for tag in tags:
        rows = conn.execute("SELECT tenant FROM tenant_tags WHERE space = ? AND tag = ?", (space, tag))
        who = [f"tenant {row['tenant']!r}" for row in rows]
        machines = conn.execute(
            "SELECT name, tenant_tags FROM machines WHERE space = ? AND tenant_tags LIKE ?",
            (space, f"%{tag}%"),
        )
        who += [f"machine {row['name']!r}" for row in machines if tag in json.loads(row["tenant_tags"])]
        if who:
            users[tag] = who
    return users


def tag_sets(conn: sqlite3.Connection, space: str) -> dict[str, list[str]]:
    """Every tag set of the space with its tags, by name."""
    rows = conn.execute("SELECT name, tags FROM tag_sets WHERE space = ? ORDER BY name", (space,))
    return {row["name"]: list(json.loads(row["tags"])) for row in rows}


def tag_problems(
    conn: sqlite3.Connection, space: str, tags: Iterable[str], path: str
) -> list[tuple[str, str]]:
    """Each tag that is not ``Set/Tag`` of an existing set and tag, with its path."""
    known = tag_sets(conn, space)
    problems = []
    for index, tag in enumerate(tags):
        at = f"{path}[{index}]"
        set_name, slash, tag_name = tag.partition("/")
        if not slash or not set_name or not tag_name:
            problems.append((at, f"tag {tag[:NAME_MAX]!r} must be TagSet/Tag (e.g. Region/EU)"))
        elif set_name not in known:
            problems.append((at, f"tag set {set_name!r} does not exist in space {space!r}"))
        elif tag_name not in known[set_name]:
            has = ", ".join(known[set_name]) or "no tags"
            problems.append((at, f"tag set {set_name!r} has no tag {tag_name!r} (it has: {has})"))
    return problems


def matches(carried: Iterable[str], wanted: Iterable[str]) -> bool:
    """Whether tags ``carried`` pass the filter ``wanted``: one of each set's tags, for every set."""
    have = set(carried)
    by_set: dict[str, set[str]] = {}
    for tag in wanted:
        by_set.setdefault(tag.partition("/")[0], set()).add(tag)
    return bool(by_set) and all(have & tags for tags in by_set.values())


# --- tenants -----------------------------------------------------------------------------------


def parse_tenant(doc: object, name: str) -> Tenant:
    """The tenant document (its shape, and the rules that need no database)."""
    tenant = convert_document(doc, Tenant, TenantError)
    problems = list(_name_problems(name, tenant.name))
    for index, variable in enumerate(tenant.variables):
        at = f"variables[{index}].value"
        if variable.value is UNSET and not variable.sensitive:
            problems.append((at, "required (only a sensitive value may be left out, to keep the stored one)"))
        elif isinstance(variable.value, str) and over_bytes(variable.value, MAX_VALUE_BYTES):
            problems.append((at, f"must be at most {MAX_VALUE_BYTES} bytes in UTF-8"))
    if problems:
        raise TenantError(problems)
    return msgspec.structs.replace(tenant, name=name)


def _name_problems(name: str, given: str | UnsetType) -> Iterator[tuple[str, str]]:
    if given is not UNSET and given != name:
        yield "name", f"must match the name in the URL {name[:NAME_MAX]!r}"


def put_tenant(conn: sqlite3.Connection, space: str, name: str, tenant: Tenant) -> tuple[bool, Tenant]:
    """Create or replace a tenant after checking what it names; (created, the document stored)."""
    old = find(conn, space, name)
    tenant = _keep_sensitive(tenant, old.document if old else None)
    problems = tag_problems(conn, space, tenant.tags, "tags")
    for project in tenant.projects:
        exists = conn.execute("SELECT 1 FROM projects WHERE space = ? AND name = ?", (space, project))
        if exists.fetchone() is None:
            problems.append(
                (key_path("projects", project), f"project {project!r} does not exist in space {space!r}")
            )
    if problems:
        raise TenantError(problems)
    conn.execute(
        "INSERT INTO tenants (space, name, document, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (space, name) DO UPDATE SET document = excluded.document,"
        " updated_at = excluded.updated_at",
        (space, name, json.dumps(sealing.seal(conn, json.loads(msgspec.json.encode(tenant)))), time.time()),
    )
    for table in ("tenant_projects", "tenant_tags"):
        conn.execute(f"DELETE FROM {table} WHERE space = ? AND tenant = ?", (space, name))  # noqa: S608 - a constant
    links = {(project, env) for project, envs in tenant.projects.items() for env in envs}
    conn.executemany(
        "INSERT INTO tenant_projects (space, tenant, project, environment) VALUES (?, ?, ?, ?)",
        [(space, name, project, env) for project, env in sorted(links)],
    )
    conn.executemany(
        "INSERT INTO tenant_tags (space, tenant, tag) VALUES (?, ?, ?)",
        [(space, name, tag) for tag in sorted(set(tenant.tags))],
    )
    return old is None, tenant


def _keep_sensitive(tenant: Tenant, old: Tenant | None) -> Tenant:
    """A sensitive variable sent without a value takes the stored value of the same name and scopes."""
    stored = {v.scope(): v.value for v in (old.variables if old else ()) if v.sensitive}
    kept: list[TenantVariable] = []
    problems = []
    for index, variable in enumerate(tenant.variables):
        if variable.value is UNSET:
            value = stored.get(variable.scope(), UNSET)
            if value is UNSET:
                problems.append((f"variables[{index}].value", "required (no value is stored for it to keep)"))
            variable = msgspec.structs.replace(variable, value=value)
        kept.append(variable)
    if problems:
        raise TenantError(problems)
    return msgspec.structs.replace(tenant, variables=tuple(kept))


def _from_row(conn: sqlite3.Connection, row: sqlite3.Row) -> StoredTenant:
    """A stored tenant, its sealed sensitive values opened (they are sealed at rest, as projects' are)."""
    document = sealing.unseal(conn, json.loads(row["document"]))
    return StoredTenant(row["name"], msgspec.convert(document, type=Tenant))


def find(conn: sqlite3.Connection, space: str, name: str) -> StoredTenant | None:
    """The tenant of that name, or None."""
    row = conn.execute(
        "SELECT name, document FROM tenants WHERE space = ? AND name = ?", (space, name)
    ).fetchone()
    return None if row is None else _from_row(conn, row)


def get(conn: sqlite3.Connection, space: str, name: str) -> StoredTenant:
    """The tenant of that name; TenantNotFound naming it otherwise."""
    found = find(conn, space, name)
    if found is None:
        raise TenantNotFound(f"tenant {name[:NAME_MAX]!r} does not exist in space {space!r}")
    return found


def listing(conn: sqlite3.Connection, space: str) -> list[StoredTenant]:
    """Every tenant of the space, by name."""
    rows = conn.execute("SELECT name, document FROM tenants WHERE space = ? ORDER BY name", (space,))
    return [_from_row(conn, row) for row in rows]


def names(conn: sqlite3.Connection, space: str) -> set[str]:
    """The names of the space's tenants."""
    return {row["name"] for row in conn.execute("SELECT name FROM tenants WHERE space = ?", (space,))}


def connected(conn: sqlite3.Connection, space: str, project: str, environment: str) -> list[str]:
    """The tenants connected to ``project`` in ``environment``, by name."""
    rows = conn.execute(
        "SELECT tenant FROM tenant_projects WHERE space = ? AND project = ? AND environment = ?"
        " ORDER BY tenant",
        (space, project, environment),
    )
    return [row["tenant"] for row in rows]


def connected_to_project(conn: sqlite3.Connection, space: str, project: str) -> int:
    """How many tenants are connected to ``project`` in any environment."""
    row = conn.execute(
        "SELECT COUNT(DISTINCT tenant) FROM tenant_projects WHERE space = ? AND project = ?", (space, project)
    ).fetchone()
    return int(row[0])


def tagged(conn: sqlite3.Connection, space: str, wanted: Sequence[str]) -> list[str]:
    """The tenants whose tags pass the filter ``wanted``, by name."""
    rows = conn.execute("SELECT tenant, tag FROM tenant_tags WHERE space = ?", (space,))
    carried: dict[str, set[str]] = {}
    for row in rows:
        carried.setdefault(row["tenant"], set()).add(row["tag"])
    return sorted(name for name, tags in carried.items() if matches(tags, wanted))


def tenant_tags_of(
    conn: sqlite3.Connection, space: str, tenant_names: Iterable[str]
) -> Mapping[str, set[str]]:
    """The tags of each named tenant."""
    found: dict[str, set[str]] = {name: set() for name in tenant_names}
    for name in found:
        rows = conn.execute("SELECT tag FROM tenant_tags WHERE space = ? AND tenant = ?", (space, name))
        found[name] = {row["tag"] for row in rows}
    return found


def machine_problems(
    conn: sqlite3.Connection, space: str, tenant_names: Sequence[str], tags: Sequence[str]
) -> list[tuple[str, str]]:
    """What a registering machine names that does not exist: tenants, tags, tag sets."""
    known = names(conn, space)
    problems = [
        (f"tenants[{index}]", f"tenant {name[:NAME_MAX]!r} does not exist in space {space!r}")
        for index, name in enumerate(tenant_names)
        if name not in known
    ]
    return problems + tag_problems(conn, space, tags, "tenantTags")


def serves(
    machine_tenants: Iterable[str], machine_tags: Sequence[str], tenant: str, tags: Iterable[str]
) -> bool:
    """Whether a tenanted machine takes part in ``tenant``'s deployments (named, or by its tag filter)."""
    return tenant in machine_tenants or (bool(machine_tags) and matches(tags, machine_tags))
