"""The NuGet v3 documents a feed serves, built from catalog entries (pure, no I/O).

NuGet's own names, exactly (``@id``, ``@type``, camelCase fields): the service index, the
flat container's versions index, registration indexes, pages and leaves, and search
results, as https://learn.microsoft.com/nuget/api/ documents them. Both the server's feed
and the static export (`server-shim feed export`) build theirs here, so a mirror answers
install-by-id as the server does.

A registration index inlines its pages while a package has fewer than `INLINE_LIMIT`
versions (nuget.org's rule); beyond, the index lists pages of `PAGE_SIZE` versions by their
``@id`` and the client fetches the pages it needs. Every URL is absolute: NuGet clients do
not resolve a relative ``@id``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

INLINE_LIMIT = 128
PAGE_SIZE = 64
# Registration hives: "registration/" includes SemVer 2.0.0 versions, the other does not.
SEMVER2_HIVE, SEMVER1_HIVE = "registration/", "registration-semver1/"
# @type names by resource; the older names point older clients at what they understand.
_REGISTRATION_TYPES = (
    ("RegistrationsBaseUrl/3.6.0", SEMVER2_HIVE, "Package metadata, SemVer 2.0.0 versions included"),
    ("RegistrationsBaseUrl/3.4.0", SEMVER1_HIVE, "Package metadata, SemVer 1.0.0 versions only"),
    ("RegistrationsBaseUrl/3.0.0-rc", SEMVER1_HIVE, "Package metadata, SemVer 1.0.0 versions only"),
    ("RegistrationsBaseUrl/3.0.0-beta", SEMVER1_HIVE, "Package metadata, SemVer 1.0.0 versions only"),
    ("RegistrationsBaseUrl", SEMVER1_HIVE, "Package metadata, SemVer 1.0.0 versions only"),
)
_SEARCH_TYPES = (
    "SearchQueryService/3.5.0",
    "SearchQueryService/3.0.0-rc",
    "SearchQueryService/3.0.0-beta",
    "SearchQueryService",
)
_PACKAGE_TYPES = ["Package", "http://schema.nuget.org/catalog#Permalink"]


@dataclass(frozen=True)
class CatalogEntry:
    """One package version as a feed shows it (what its nuspec said, and when it came)."""

    id: str
    version: str  # normalized, without metadata
    full_version: str  # with +metadata when it has some
    published: float  # epoch seconds
    fields: Mapping[str, str] = field(default_factory=dict)
    dependency_groups: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class FeedUrls:
    """Where a feed's resources are; each ends with '/' except publish, search and legacy."""

    base: str  # the folder that holds flatcontainer/ and the registration hives
    publish: str = ""
    search: str = ""
    legacy: str = ""  # a NuGet v2 (OData) feed for `nuget list`, where there is one

    @property
    def flat_container(self) -> str:
        """The PackageBaseAddress."""
        return self.base + "flatcontainer/"

    def hive(self, semver2: bool) -> str:
        """The registration hive's base URL."""
        return self.base + (SEMVER2_HIVE if semver2 else SEMVER1_HIVE)

    def package_content(self, package_id: str, version: str) -> str:
        """The .nupkg's URL in the flat container."""
        lower_id, lower_version = package_id.lower(), version.lower()
        return f"{self.flat_container}{lower_id}/{lower_version}/{lower_id}.{lower_version}.nupkg"


def _resource(url: str, kind: str, comment: str) -> dict[str, str]:
    return {"@id": url, "@type": kind, "comment": comment}


def service_index(urls: FeedUrls) -> dict[str, Any]:
    """The service index: flat container, registrations, and publish/search/legacy where given."""
    resources = [_resource(urls.flat_container, "PackageBaseAddress/3.0.0", "Package files by lowercase id")]
    resources += [_resource(urls.base + hive, kind, note) for kind, hive, note in _REGISTRATION_TYPES]
    # NuGet 4.3+ clients look for this name first (nuget.org's index has it): the SemVer 2 hive.
    versioned = _resource(urls.hive(True), "RegistrationsBaseUrl/Versioned", "Package metadata, SemVer 2.0.0")
    resources.append({**versioned, "clientVersion": "4.3.0-alpha"})
    if urls.publish:
        resources.append(_resource(urls.publish, "PackagePublish/2.0.0", "Push (PUT) and delete"))
    if urls.search:
        resources += [
            _resource(urls.search, kind, "Search by id, title, tags, description") for kind in _SEARCH_TYPES
        ]
    if urls.legacy:
        resources.append(_resource(urls.legacy, "LegacyGallery/2.0.0", "NuGet v2 feed for `nuget list`"))
    return {"version": "3.0.0", "resources": resources}


def versions_index(version_list: Iterable[str]) -> dict[str, Any]:
    """A flat container versions index: lowercase, in the order given."""
    return {"versions": [version.lower() for version in version_list]}


def shown_version(entry: CatalogEntry, semver2: bool) -> str:
    """The version string a hive shows: with metadata in the SemVer 2 hive, normalized otherwise."""
    return entry.full_version if semver2 else entry.version


def _published(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def _text_list(text: str | None, separators: str) -> list[str]:
    if not text:
        return []
    for separator in separators[1:]:
        text = text.replace(separator, separators[0])
    return [word.strip() for word in text.split(separators[0]) if word.strip()]


def _dependency_groups(entry: CatalogEntry, urls: FeedUrls, semver2: bool, leaf: str) -> list[dict[str, Any]]:
    groups = []
    for group in entry.dependency_groups:
        framework = str(group.get("targetFramework", ""))
        group_id = f"{leaf}#dependencygroup" + (f"/{framework.lower()}" if framework else "")
        dependencies = [
            {
                "@id": f"{group_id}/{dep['id'].lower()}",
                "@type": "PackageDependency",
                "id": dep["id"],
                "range": dep.get("range") or "(, )",
                "registration": f"{urls.hive(semver2)}{dep['id'].lower()}/index.json",
            }
            for dep in group.get("dependencies", [])
        ]
        document: dict[str, Any] = {"@id": group_id, "@type": "PackageDependencyGroup"}
        if framework:
            document["targetFramework"] = framework
        groups.append({**document, "dependencies": dependencies})
    return groups


def leaf_url(urls: FeedUrls, entry: CatalogEntry, semver2: bool) -> str:
    """The registration leaf's URL."""
    return f"{urls.hive(semver2)}{entry.id.lower()}/{entry.version.lower()}.json"


def index_url(urls: FeedUrls, package_id: str, semver2: bool) -> str:
    """The registration index's URL."""
    return f"{urls.hive(semver2)}{package_id.lower()}/index.json"


def catalog_entry(entry: CatalogEntry, urls: FeedUrls, semver2: bool) -> dict[str, Any]:
    """The catalogEntry object of a registration leaf in a page."""
    leaf = leaf_url(urls, entry, semver2)
    fields = entry.fields
    document: dict[str, Any] = {
        "@id": leaf,
        "@type": "PackageDetails",
        "id": entry.id,
        "version": shown_version(entry, semver2),
        "listed": True,
        "published": _published(entry.published),
        "packageContent": urls.package_content(entry.id, entry.version),
        "authors": fields.get("authors", ""),
        "description": fields.get("description", ""),
        "tags": _text_list(fields.get("tags"), " ,;"),
        "dependencyGroups": _dependency_groups(entry, urls, semver2, leaf),
        "requireLicenseAcceptance": fields.get("requireLicenseAcceptance", "").lower() == "true",
    }
    for name in ("title", "summary", "projectUrl", "iconUrl", "licenseUrl", "minClientVersion", "language"):
        if fields.get(name):
            document[name] = fields[name]
    return document


def _leaf_in_page(entry: CatalogEntry, urls: FeedUrls, semver2: bool) -> dict[str, Any]:
    return {
        "@id": leaf_url(urls, entry, semver2),
        "@type": "Package",
        "catalogEntry": catalog_entry(entry, urls, semver2),
        "packageContent": urls.package_content(entry.id, entry.version),
        "registration": index_url(urls, entry.id, semver2),
    }


def page_bounds(entries: Sequence[CatalogEntry]) -> list[tuple[int, int]]:
    """(start, end) of each page over `entries` (sorted by version), PAGE_SIZE versions each."""
    return [(start, min(start + PAGE_SIZE, len(entries))) for start in range(0, len(entries), PAGE_SIZE)]


def page_url(urls: FeedUrls, entries: Sequence[CatalogEntry], semver2: bool) -> str:
    """A page's URL, named by its lowest and highest version."""
    lower, upper = entries[0].version.lower(), entries[-1].version.lower()
    return f"{urls.hive(semver2)}{entries[0].id.lower()}/page/{lower}/{upper}.json"


def registration_page(entries: Sequence[CatalogEntry], urls: FeedUrls, semver2: bool) -> dict[str, Any]:
    """One page with its leaves inlined (as a page document, or inside an index)."""
    return {
        "@id": page_url(urls, entries, semver2),
        "@type": "catalog:CatalogPage",
        "count": len(entries),
        "items": [_leaf_in_page(entry, urls, semver2) for entry in entries],
        "lower": entries[0].version,
        "upper": entries[-1].version,
        "parent": index_url(urls, entries[0].id, semver2),
    }


def _page_reference(entries: Sequence[CatalogEntry], urls: FeedUrls, semver2: bool) -> dict[str, Any]:
    return {
        "@id": page_url(urls, entries, semver2),
        "@type": "catalog:CatalogPage",
        "count": len(entries),
        "lower": entries[0].version,
        "upper": entries[-1].version,
    }


def registration_index(entries: Sequence[CatalogEntry], urls: FeedUrls, semver2: bool) -> dict[str, Any]:
    """The registration index of one package; `entries` sorted by version, at least one."""
    inline = len(entries) < INLINE_LIMIT
    build = registration_page if inline else _page_reference
    pages = [build(entries[start:end], urls, semver2) for start, end in page_bounds(entries)]
    return {
        "@id": index_url(urls, entries[0].id, semver2),
        "@type": ["catalog:CatalogRoot", "PackageRegistration", "catalog:Permalink"],
        "count": len(pages),
        "items": pages,
    }


def registration_leaf(entry: CatalogEntry, urls: FeedUrls, semver2: bool) -> dict[str, Any]:
    """The registration leaf document of one version."""
    return {
        "@id": leaf_url(urls, entry, semver2),
        "@type": _PACKAGE_TYPES,
        "catalogEntry": leaf_url(urls, entry, semver2),
        "listed": True,
        "packageContent": urls.package_content(entry.id, entry.version),
        "published": _published(entry.published),
        "registration": index_url(urls, entry.id, semver2),
    }


def search_result(entries: Sequence[CatalogEntry], urls: FeedUrls, semver2: bool) -> dict[str, Any]:
    """One package of a search answer: the newest of `entries` (sorted by version) and all of them."""
    newest = entries[-1]
    fields = newest.fields
    registration = index_url(urls, newest.id, semver2)
    document: dict[str, Any] = {
        "@id": registration,
        "@type": "Package",
        "registration": registration,
        "id": newest.id,
        "version": shown_version(newest, semver2),
        "description": fields.get("description", ""),
        "summary": fields.get("summary", ""),
        "title": fields.get("title") or newest.id,
        "tags": _text_list(fields.get("tags"), " ,;"),
        "authors": _text_list(fields.get("authors"), ","),
        "totalDownloads": 0,
        "verified": False,
        "packageTypes": [{"name": "Dependency"}],
        "versions": [
            {"version": shown_version(entry, semver2), "downloads": 0, "@id": leaf_url(urls, entry, semver2)}
            for entry in entries
        ],
    }
    for name in ("projectUrl", "iconUrl", "licenseUrl"):
        if fields.get(name):
            document[name] = fields[name]
    return document


def search_answer(
    total: int, found: Sequence[Sequence[CatalogEntry]], urls: FeedUrls, semver2: bool
) -> dict[str, Any]:
    """The search response: the number of matching packages, and this page of them."""
    return {"totalHits": total, "data": [search_result(entries, urls, semver2) for entries in found]}
