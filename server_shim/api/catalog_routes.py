"""Registrations and search of the built-in feed, answered from the database.

GET /nuget/v3/registration/{lowerid}/index.json                  the index (pages inlined below 128 versions)
GET /nuget/v3/registration/{lowerid}/page/{lower}/{upper}.json   one page
GET /nuget/v3/registration/{lowerid}/{lowerversion}.json         one leaf
GET /nuget/v3/registration-semver1/...                           the same without SemVer 2.0.0 versions
GET /nuget/v3/search?q=&skip=&take=&prerelease=&semVerLevel=     search (packageType is accepted, ignored)

Documents are built by tentacle.protocol.nuget_documents from the rows feed_catalog reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from server_shim.api.middleware import DB, answer
from server_shim.store import feed_catalog as catalog
from tentacle.errors import InvalidInput, NotFound
from tentacle.protocol import nuget_documents as documents
from tentacle.protocol.nuget_documents import SEMVER1_HIVE, SEMVER2_HIVE, CatalogEntry, FeedUrls
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion

UrlsOf = Callable[[web.Request], FeedUrls]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]
_BOOLEANS = {"true": True, "false": False, "": False}


class SearchRequestError(InvalidInput):
    """A search parameter that is not what NuGet's protocol allows."""


async def _entries(request: web.Request, semver2: bool) -> list[CatalogEntry]:
    lower_id = request.match_info["lowerid"]
    found = await request.app[DB].run(catalog.entries, lower_id, semver2)
    if not found:
        raise NotFound(f"package {lower_id} is not in the built-in feed (as a NuGet package)")
    return found


def _version(text: str, lower_id: str) -> NuGetVersion:
    try:
        return NuGetVersion.parse(text)
    except InvalidVersion as exc:
        raise NotFound(f"package {lower_id} has no version {text!r}") from exc


def _between(entries: Sequence[CatalogEntry], low: NuGetVersion, high: NuGetVersion) -> list[CatalogEntry]:
    return [entry for entry in entries if low <= NuGetVersion.parse(entry.version) <= high]


def _hive_routes(urls_of: UrlsOf, semver2: bool) -> tuple[Route, Route, Route]:
    async def index(request: web.Request) -> web.Response:
        """The registration index of one package id."""
        entries = await _entries(request, semver2)
        return answer(documents.registration_index(entries, urls_of(request), semver2))

    async def page(request: web.Request) -> web.Response:
        """One registration page: the versions from lower to upper."""
        entries, lower_id = await _entries(request, semver2), request.match_info["lowerid"]
        low, high = (_version(request.match_info[name], lower_id) for name in ("lower", "upper"))
        found = _between(entries, low, high)
        if not found:
            raise NotFound(f"package {lower_id} has no versions from {low} to {high}")
        return answer(documents.registration_page(found, urls_of(request), semver2))

    async def leaf(request: web.Request) -> web.Response:
        """One registration leaf."""
        entries, lower_id = await _entries(request, semver2), request.match_info["lowerid"]
        wanted = _version(request.match_info["version"], lower_id)
        for entry in entries:
            if NuGetVersion.parse(entry.version) == wanted:
                return answer(documents.registration_leaf(entry, urls_of(request), semver2))
        raise NotFound(f"package {lower_id} has no version {wanted}")

    return index, page, leaf


def _integer(name: str, text: str | None, default: int, low: int, high: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise SearchRequestError(f"{name}: must be a whole number of at least {low}, not {text!r}")
    return min(value, high)


def search_query(query: dict[str, str]) -> catalog.SearchQuery:
    """A SearchQuery from the search URL's parameters; SearchRequestError naming a bad one."""
    prerelease = query.get("prerelease", "").lower()
    if prerelease not in _BOOLEANS:
        raise SearchRequestError(f"prerelease: must be true or false, not {query['prerelease']!r}")
    try:
        semver2 = NuGetVersion.parse(query.get("semVerLevel") or "1.0.0") >= NuGetVersion(2, 0, 0)
    except InvalidVersion as exc:
        raise SearchRequestError(
            f"semVerLevel: must be a version such as 2.0.0, not {query['semVerLevel']!r}"
        ) from exc
    terms, exact = catalog.parse_terms(query.get("q", ""))
    return catalog.SearchQuery(
        terms=terms,
        exact_id=exact,
        skip=_integer("skip", query.get("skip"), 0, 0, 1_000_000_000),
        take=_integer("take", query.get("take"), 20, 0, catalog.MAX_TAKE),
        prerelease=_BOOLEANS[prerelease],
        semver2=semver2,
    )


def _search_route(urls_of: UrlsOf) -> Route:
    async def search(request: web.Request) -> web.Response:
        """Packages whose id, title, tags or description hold every term of q."""
        query = search_query(dict(request.query))
        total, found = await request.app[DB].run(catalog.search, query)
        return answer(documents.search_answer(total, found, urls_of(request), query.semver2))

    return search


def add_routes(app: web.Application, urls_of: UrlsOf) -> None:
    """Mount both registration hives and search."""
    for hive, semver2 in ((SEMVER2_HIVE, True), (SEMVER1_HIVE, False)):
        index, page, leaf = _hive_routes(urls_of, semver2)
        base = f"/nuget/v3/{hive}{{lowerid}}/"
        app.router.add_get(base + "index.json", index)
        app.router.add_get(base + "page/{lower}/{upper}.json", page)
        app.router.add_get(base + "{version}.json", leaf)
    app.router.add_get("/nuget/v3/search", _search_route(urls_of))
