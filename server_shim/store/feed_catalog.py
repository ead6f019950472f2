"""What NuGet clients are shown of the built-in feed, answered from the database.

Each package row keeps, from push, what its nuspec said (``catalog``: the descriptive
fields and dependency groups, JSON), its version with any SemVer 2 metadata, and whether
it is a prerelease or a SemVer 2.0.0 version. Only ``.nupkg`` files are NuGet packages:
the ``.zip`` and ``.tar.gz`` files the feed also holds are served by the flat container
to tentacles but never shown to NuGet clients, which could not install them.

Search reads ``package_ids``, one row per id kept current by `refresh_id` in the
transaction that changes the id's packages: the id's search text (id, title, tags,
summary and description of its newest version, lowercase) and four flags saying whether a
package of it is visible to each kind of search (stable only or prereleases too; SemVer
1.0.0 clients or 2.0.0). A search is then one indexed scan of that table for the page of
ids and one primary-key lookup of their versions; no file is read.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tentacle.protocol.nuget_documents import CatalogEntry
from tentacle.protocol.nuget_versions import NuGetVersion
from tentacle.protocol.nuspec import Manifest

MAX_TAKE = 1000
_SEARCH_TEXT_CHARS = 4000
_NUGET = "%.nupkg"  # stored file names are lowercase
_FLAGS = {(False, False): "stable1", (True, False): "any1", (False, True): "stable2", (True, True): "any2"}
_BY_IDS = (
    "SELECT lower_id, id, version, full_version, created_at, catalog, prerelease, semver2"
    " FROM packages WHERE lower_id IN"
)
_BY_ID = (
    "SELECT id, version, full_version, created_at, catalog, prerelease, semver2"
    " FROM packages WHERE lower_id = ? AND file_name LIKE ?"
)


@dataclass(frozen=True)
class SearchQuery:
    """A search: every term must appear in a package's text; `exact_id` (packageid:X) matches one id."""

    terms: tuple[str, ...] = ()
    exact_id: str | None = None
    skip: int = 0
    take: int = 20
    prerelease: bool = False
    semver2: bool = False


def parse_terms(q: str) -> tuple[tuple[str, ...], str | None]:
    """The lowercase terms of a query and the id of a ``packageid:X`` (or ``id:X``) term."""
    terms, exact = [], None
    for word in q.lower().split():
        name, colon, value = word.partition(":")
        if colon and name in ("packageid", "id") and value:
            exact = value
        elif word:
            terms.append(word)
    return tuple(terms), exact


def catalog_json(manifest: Manifest | None) -> str:
    """The catalog column of a package: its nuspec's fields and dependency groups."""
    if manifest is None:
        return "{}"
    groups = [
        {
            "targetFramework": group.target_framework,
            "dependencies": [{"id": dep.id, "range": dep.range} for dep in group.dependencies],
        }
        for group in manifest.dependency_groups
    ]
    return json.dumps({"fields": manifest.fields, "dependencyGroups": groups})


def _entry(row: sqlite3.Row) -> CatalogEntry:
    catalog: dict[str, Any] = json.loads(row["catalog"] or "{}")
    return CatalogEntry(
        id=row["id"],
        version=row["version"],
        full_version=row["full_version"] or row["version"],
        published=row["created_at"],
        fields=catalog.get("fields", {}),
        dependency_groups=catalog.get("dependencyGroups", []),
    )


def _visible(row: sqlite3.Row, prerelease: bool, semver2: bool) -> bool:
    return (prerelease or not row["prerelease"]) and (semver2 or not row["semver2"])


def _sorted(rows: Iterable[sqlite3.Row]) -> list[CatalogEntry]:
    return [entry for _, entry in sorted((NuGetVersion.parse(r["version"]), _entry(r)) for r in rows)]


def entries(conn: sqlite3.Connection, lower_id: str, semver2: bool) -> list[CatalogEntry]:
    """The NuGet packages of one id, oldest first; SemVer 2.0.0 versions only if `semver2`."""
    rows = conn.execute(_BY_ID, (lower_id.lower(), _NUGET))
    return _sorted(row for row in rows if _visible(row, True, semver2))


def _escaped(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _conditions(query: SearchQuery, table: str) -> tuple[str, list[Any]]:
    """The WHERE condition over package_ids (named `table`) and its parameters."""
    where = [f"{table}.{_FLAGS[(query.prerelease, query.semver2)]} = 1"]
    params: list[Any] = []
    for term in query.terms:
        where.append(f"{table}.search_text LIKE ? ESCAPE '\\'")
        params.append(_escaped(term))
    if query.exact_id is not None:
        where.append(f"{table}.lower_id = ?")
        params.append(query.exact_id)
    return " AND ".join(where), params


# Only fixed column names and '?' placeholders are joined into the statements below.


def search(conn: sqlite3.Connection, query: SearchQuery) -> tuple[int, list[list[CatalogEntry]]]:
    """(how many ids match, each id of the page with its visible versions, oldest first)."""
    condition, params = _conditions(query, "i")
    counting = f"SELECT COUNT(*) FROM package_ids i WHERE {condition}"  # noqa: S608 - see above
    total = int(conn.execute(counting, params).fetchone()[0])
    paging = f"SELECT lower_id FROM package_ids i WHERE {condition} ORDER BY lower_id LIMIT ? OFFSET ?"  # noqa: S608 - see above
    ids = [row[0] for row in conn.execute(paging, [*params, query.take, query.skip])]
    if not ids:
        return total, []
    marks = ", ".join("?" * len(ids))
    versions = f"{_BY_IDS} ({marks}) AND file_name LIKE ?"
    rows = conn.execute(versions, [*ids, _NUGET])
    by_id: dict[str, list[sqlite3.Row]] = {lower_id: [] for lower_id in ids}
    for row in rows:
        if _visible(row, query.prerelease, query.semver2):
            by_id[row["lower_id"]].append(row)
    return total, [_sorted(found) for found in by_id.values() if found]


def search_versions(conn: sqlite3.Connection, query: SearchQuery) -> tuple[int, list[list[CatalogEntry]]]:
    """As `search`, but skip and take count versions, not ids (NuGet v2's Search() without a filter)."""
    condition, params = _conditions(query, "i")
    visible = "p.file_name LIKE ? AND (? = 1 OR p.prerelease = 0) AND (? = 1 OR p.semver2 = 0)"
    params += [_NUGET, int(query.prerelease), int(query.semver2)]
    joined = f"FROM packages p JOIN package_ids i ON i.lower_id = p.lower_id WHERE {condition} AND {visible}"
    total = int(conn.execute(f"SELECT COUNT(*) {joined}", params).fetchone()[0])
    rows = conn.execute(
        f"SELECT p.* {joined} ORDER BY p.lower_id, p.version LIMIT ? OFFSET ?",
        [*params, query.take, query.skip],
    )
    by_id: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        by_id.setdefault(row["lower_id"], []).append(row)
    return total, [_sorted(found) for found in by_id.values()]


def _search_text(package_id: str, fields: dict[str, str]) -> str:
    parts = [package_id, *(fields.get(name, "") for name in ("title", "tags", "summary", "description"))]
    return " ".join(part for part in parts if part).lower()[:_SEARCH_TEXT_CHARS]


def refresh_id(conn: sqlite3.Connection, lower_id: str) -> None:
    """Bring the id's search row up to date with its packages (call in the changing transaction)."""
    rows = conn.execute(_BY_ID, (lower_id, _NUGET)).fetchall()
    if not rows:
        conn.execute("DELETE FROM package_ids WHERE lower_id = ?", (lower_id,))
        return
    newest = max(rows, key=lambda row: NuGetVersion.parse(row["version"]))
    flags = {name: int(any(_visible(row, pre, two) for row in rows)) for (pre, two), name in _FLAGS.items()}
    fields = json.loads(newest["catalog"] or "{}").get("fields", {})
    conn.execute(
        "INSERT INTO package_ids (lower_id, id, search_text, stable1, any1, stable2, any2)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (lower_id) DO UPDATE SET id = excluded.id,"
        " search_text = excluded.search_text, stable1 = excluded.stable1, any1 = excluded.any1,"
        " stable2 = excluded.stable2, any2 = excluded.any2",
        (lower_id, newest["id"], _search_text(newest["id"], fields), *flags.values()),
    )


def unfilled(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(lower id, version, file name) of rows pushed before the catalog columns existed."""
    rows = conn.execute("SELECT lower_id, version, file_name FROM packages WHERE catalog IS NULL")
    return [(row["lower_id"], row["version"], row["file_name"]) for row in rows]


def fill(conn: sqlite3.Connection, found: Sequence[tuple[str, str, Manifest | None]]) -> None:
    """Store what old rows' files said ((lower id, version, manifest)) and refresh their ids."""
    for lower_id, version, manifest in found:
        parsed = NuGetVersion.parse(manifest.version if manifest else version)
        conn.execute(
            "UPDATE packages SET full_version = ?, catalog = ?, prerelease = ?, semver2 = ?"
            " WHERE lower_id = ? AND version = ? AND catalog IS NULL",
            (
                parsed.full_string,
                catalog_json(manifest),
                int(parsed.is_prerelease),
                int(parsed.is_semver2),
                lower_id,
                version,
            ),
        )
    for lower_id in sorted({lower_id for lower_id, _, _ in found}):
        refresh_id(conn, lower_id)
