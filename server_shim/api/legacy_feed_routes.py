"""The one corner of NuGet's v2 (OData) protocol that `nuget list` needs.

NuGet.exe's `list` has no v3 implementation: against a v3 source it looks for a
``LegacyGallery/2.0.0`` resource in the service index and calls its ``Search()`` function
(NuGet.Protocol's V3FeedListResourceProvider and V2FeedQueryBuilder)::

    GET /nuget/v2/                                        service document (any 2xx will do)
    GET /nuget/v2/Search()?$filter=IsLatestVersion&$orderby=Id&searchTerm='web'
        &targetFramework=''&includePrerelease=false&$skip=0&$top=30&semVerLevel=2.0.0

``$filter=IsLatestVersion`` asks for each id's newest stable version, ``IsAbsoluteLatestVersion``
for its newest version, no filter for every version (``list -AllVersions``); $skip and $top
page over what is listed. The answer is an Atom feed whose entries carry what NuGet's
V2FeedParser reads (atom:title, atom:content/@src, m:properties with d:Id and d:Version...).
It is answered by the same database search as the v3 SearchQueryService; this is not a v2
server (no $metadata, no Packages(), no FindPackagesById()).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence

from aiohttp import web

from server_shim.api.middleware import DB
from server_shim.store import feed_catalog as catalog
from tentacle.errors import InvalidInput
from tentacle.protocol.nuget_documents import CatalogEntry, FeedUrls, shown_version

UrlsOf = Callable[[web.Request], FeedUrls]
ATOM = "http://www.w3.org/2005/Atom"
DATA = "http://schemas.microsoft.com/ado/2007/08/dataservices"
META = "http://schemas.microsoft.com/ado/2007/08/dataservices/metadata"
_XML = "application/atom+xml;type=feed;charset=utf-8"
_FILTERS = {"": None, "IsLatestVersion": False, "IsAbsoluteLatestVersion": True}
ET.register_namespace("", ATOM)
ET.register_namespace("d", DATA)
ET.register_namespace("m", META)


class LegacyRequestError(InvalidInput):
    """A v2 search parameter this server does not understand."""


def _quoted(text: str, name: str) -> str:
    """An OData string literal's value ('a''b' is a'b); '' when absent."""
    if not text:
        return ""
    if len(text) < 2 or not (text.startswith("'") and text.endswith("'")):
        raise LegacyRequestError(f"{name}: must be an OData string in single quotes, not {text!r}")
    return text[1:-1].replace("''", "'")


def _number(query: dict[str, str], name: str, default: int, high: int) -> int:
    text = query.get(name, "")
    if not text:
        return default
    if not text.isdigit():
        raise LegacyRequestError(f"{name}: must be a whole number, not {text!r}")
    return min(int(text), high)


def legacy_query(query: dict[str, str]) -> tuple[catalog.SearchQuery, bool | None]:
    """The search and, for a latest-version filter, whether prereleases count (None: all versions)."""
    wanted = query.get("$filter", "")
    if wanted not in _FILTERS:
        raise LegacyRequestError(f"$filter: only IsLatestVersion or IsAbsoluteLatestVersion, not {wanted!r}")
    latest = _FILTERS[wanted]
    terms, exact = catalog.parse_terms(_quoted(query.get("searchTerm", ""), "searchTerm"))
    include = query.get("includePrerelease", "false").lower() == "true"
    search = catalog.SearchQuery(
        terms=terms,
        exact_id=exact,
        skip=_number(query, "$skip", 0, 1_000_000_000),
        take=_number(query, "$top", 30, catalog.MAX_TAKE),
        prerelease=include if latest is None else latest,
        semver2=query.get("semVerLevel", "").startswith("2"),
    )
    return search, latest


def _text(parent: ET.Element, tag: str, text: str, kind: str | None = None) -> None:
    element = ET.SubElement(parent, tag)
    element.text = text
    if kind is not None:
        element.set(f"{{{META}}}type", kind)


def _entry(
    feed: ET.Element, entry: CatalogEntry, urls: FeedUrls, semver2: bool, flags: tuple[bool, bool]
) -> None:
    version = shown_version(entry, semver2)
    item = ET.SubElement(feed, f"{{{ATOM}}}entry")
    _text(item, f"{{{ATOM}}}id", f"{urls.legacy}Packages(Id='{entry.id}',Version='{entry.version}')")
    _text(item, f"{{{ATOM}}}title", entry.id)
    _text(item, f"{{{ATOM}}}summary", entry.fields.get("summary", ""))
    _text(item, f"{{{ATOM}}}updated", _when(entry.published))
    author = ET.SubElement(item, f"{{{ATOM}}}author")
    _text(author, f"{{{ATOM}}}name", entry.fields.get("authors", ""))
    ET.SubElement(
        item,
        f"{{{ATOM}}}content",
        {"type": "application/zip", "src": urls.package_content(entry.id, entry.version)},
    )
    properties = ET.SubElement(item, f"{{{META}}}properties")
    for name, value in (("Id", entry.id), ("Version", version), ("NormalizedVersion", entry.version)):
        _text(properties, f"{{{DATA}}}{name}", value)
    for name in ("Title", "Description", "Tags", "ProjectUrl", "IconUrl", "LicenseUrl"):
        _text(properties, f"{{{DATA}}}{name}", entry.fields.get(name[0].lower() + name[1:], ""))
    _text(properties, f"{{{DATA}}}IsLatestVersion", str(flags[0]).lower(), "Edm.Boolean")
    _text(properties, f"{{{DATA}}}IsAbsoluteLatestVersion", str(flags[1]).lower(), "Edm.Boolean")
    _text(properties, f"{{{DATA}}}IsPrerelease", str("-" in entry.version).lower(), "Edm.Boolean")
    _text(properties, f"{{{DATA}}}Published", _when(entry.published), "Edm.DateTime")
    _text(properties, f"{{{DATA}}}DownloadCount", "0", "Edm.Int32")


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _latest(entries: Sequence[CatalogEntry]) -> tuple[CatalogEntry | None, CatalogEntry]:
    stable = [entry for entry in entries if "-" not in entry.version]
    return (stable[-1] if stable else None), entries[-1]


def atom_feed(
    urls: FeedUrls, found: Sequence[Sequence[CatalogEntry]], semver2: bool, latest: bool | None
) -> bytes:
    """The Atom feed of a Search() answer: one entry per listed version."""
    feed = ET.Element(f"{{{ATOM}}}feed", {"{http://www.w3.org/XML/1998/namespace}base": urls.legacy})
    _text(feed, f"{{{ATOM}}}id", urls.legacy + "Search")
    _text(feed, f"{{{ATOM}}}title", "Search")
    _text(feed, f"{{{ATOM}}}updated", _when(time.time()))
    for entries in found:
        newest_stable, newest = _latest(entries)
        shown = list(entries) if latest is None else [newest if latest else newest_stable or newest]
        for entry in shown:
            _entry(feed, entry, urls, semver2, (entry is newest_stable, entry is newest))
    return bytes(ET.tostring(feed, encoding="utf-8", xml_declaration=True))


def _service_document(urls: FeedUrls) -> bytes:
    service = ET.Element(
        "{http://www.w3.org/2007/app}service", {"{http://www.w3.org/XML/1998/namespace}base": urls.legacy}
    )
    workspace = ET.SubElement(service, "{http://www.w3.org/2007/app}workspace")
    _text(workspace, f"{{{ATOM}}}title", "Default")
    collection = ET.SubElement(workspace, "{http://www.w3.org/2007/app}collection", {"href": "Packages"})
    _text(collection, f"{{{ATOM}}}title", "Packages")
    return bytes(ET.tostring(service, encoding="utf-8", xml_declaration=True))


def add_routes(app: web.Application, urls_of: UrlsOf) -> None:
    """Mount the service document and Search()."""

    async def service(request: web.Request) -> web.Response:
        """The v2 service document (NuGet only checks that it answers)."""
        body = _service_document(urls_of(request))
        return web.Response(body=body, content_type="application/xml", charset="utf-8")

    async def search(request: web.Request) -> web.Response:
        """Search(): the listed versions of the matching ids, as Atom."""
        query, latest = legacy_query(dict(request.query))
        if latest is None:
            _, found = await request.app[DB].run(catalog.search_versions, query)
        else:
            _, found = await request.app[DB].run(catalog.search, query)
        body = atom_feed(urls_of(request), found, query.semver2, latest)
        return web.Response(body=body, headers={"Content-Type": _XML})

    for path in ("/nuget/v2", "/nuget/v2/"):
        app.router.add_get(path, service)
    app.router.add_get("/nuget/v2/Search()", search)
