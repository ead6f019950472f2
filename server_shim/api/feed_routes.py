"""The built-in feed over HTTPS: a NuGet v3 service index and its flat container.

GET /nuget/v3/index.json                                          service index
GET /nuget/v3/flatcontainer/{lowerid}/index.json                  {"versions": [...]}
GET /nuget/v3/flatcontainer/{lowerid}/{lowerversion}/{filename}   the file (Range, If-Range)

Only two kinds of caller get in (`feed_access`, a middleware for /nuget/ paths, since
the API key middleware guards /api/ only): a tentacle whose client certificate belongs
to a registered machine that was not removed, or an operator with a valid X-Api-Key.
Anyone else gets 401 (no credentials, bad key) or 403 (a certificate we do not
accept) with a JSON error, and the refusal is logged.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from server_shim.api.middleware import DB, Handler, answer, error_response
from server_shim.store import accounts
from server_shim.store import feed_store as feed
from server_shim.store import machine_rows as machines
from tentacle.common.logs import event
from tentacle.errors import NotFound
from tentacle.net.tls import peer_thumbprint
from tentacle.protocol.nuget_versions import InvalidVersion

log = logging.getLogger("server_shim.api.feed_routes")
FEED_DIR = web.AppKey("feed_dir", Path)
PREFIX = "/nuget/"
FLAT_CONTAINER = "/nuget/v3/flatcontainer/"
_FILE_CHUNK = 256 * 1024
_OCTETS = "application/octet-stream"  # never a guess from the name: .tar.gz is not gzip-encoded


_NO_CREDENTIALS = "a registered tentacle's certificate or an X-Api-Key is required"


def _machine_refusal(conn: sqlite3.Connection, presented: str) -> tuple[str, str] | None:
    """(code, message) refusing a client certificate, or None when it is accepted."""
    if machines.is_revoked(conn, presented):
        return "revoked", f"certificate {presented} was revoked (machine removed)"
    if machines.by_thumbprint(conn, presented) is None:
        return "unregistered", f"certificate {presented} is not registered"
    return None


def _refuse(request: web.Request, status: int, code: str, message: str, presented: str) -> web.Response:
    event(log, "feed.refused", logging.WARNING, path=request.path, peer=request.remote, reason=code)
    return error_response(status, code, message, {"presentedThumbprint": presented} if presented else {})


async def _refusal(request: web.Request) -> web.Response | None:
    """None when the caller may read the feed, else the response that refuses it."""
    db = request.app[DB]
    key = request.headers.get("X-Api-Key", "")
    if key:
        if await db.run(accounts.api_key_name, key) is not None:
            return None
        return _refuse(request, 401, "unauthorized", "invalid API key", "")
    presented = peer_thumbprint(request.transport)
    if presented is None:
        return _refuse(request, 401, "unauthorized", _NO_CREDENTIALS, "")
    refused = await db.run(_machine_refusal, presented)
    return None if refused is None else _refuse(request, 403, *refused, presented)


@web.middleware
async def feed_access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Paths under /nuget/ need a registered tentacle's certificate or an API key."""
    if request.path.startswith(PREFIX):
        refusal = await _refusal(request)
        if refusal is not None:
            return refusal
    return await handler(request)


class PackageFileResponse(web.FileResponse):
    """A FileResponse that also honours an If-Range holding an entity-tag.

    aiohttp reads If-Range as a date only, so a stale entity-tag would still get the
    range; RFC 9110 says a validator that does not match means the whole file (200).
    The ETag compared is the one FileResponse sends ('"{mtime_ns:x}-{size:x}"'; a test
    resumes with it, so a change of that format in aiohttp fails loudly).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, chunk_size=_FILE_CHUNK, headers={"Content-Type": _OCTETS})
        self.package_path = path

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Serve the whole file when If-Range names another entity-tag, else as aiohttp does."""
        if_range = request.headers.get("If-Range", "")
        if if_range.startswith(('"', "W/")):
            try:
                st = await asyncio.to_thread(self.package_path.stat)
            except OSError:
                st = None  # FileResponse answers 404 itself
            if st is None or if_range != f'"{st.st_mtime_ns:x}-{st.st_size:x}"':
                headers = CIMultiDict(request.headers)
                headers.popall("Range", None)
                request = request.clone(headers=headers)
        return await super().prepare(request)


async def service_index(request: web.Request) -> web.Response:
    """The service index; its PackageBaseAddress is this server as the caller reached it."""
    return answer(feed.service_index(f"{request.scheme}://{request.host}{FLAT_CONTAINER}"))


async def versions_index(request: web.Request) -> web.Response:
    """The versions of one package, lowercase, in NuGet order."""
    lower_id = request.match_info["lowerid"]
    found = await request.app[DB].run(feed.versions, lower_id)
    if not found:
        raise NotFound(f"package {lower_id} is not in the built-in feed")
    return answer(feed.versions_index(found))


async def package_file(request: web.Request) -> web.StreamResponse:
    """One package file, streamed from disk (HEAD, Range and If-Range work)."""
    lower_id, lower_version = request.match_info["lowerid"], request.match_info["lowerversion"]
    try:
        ref = await request.app[DB].run(feed.resolve, lower_id, lower_version)
    except (InvalidVersion, feed.PackageNotFound) as exc:
        missing = f"package {lower_id} version {lower_version} is not in the built-in feed"
        raise NotFound(missing) from exc
    if request.match_info["filename"].lower() != ref.file_name:
        raise NotFound(f"package {ref.id} {ref.version} is served as {ref.file_name}")
    path = feed.file_path(request.app[FEED_DIR], ref)
    return PackageFileResponse(path)


def add_routes(app: web.Application, state_dir: Path) -> None:
    """Mount the feed on the API app, serving the built-in feed of `state_dir`."""
    app[FEED_DIR] = feed.store_dir(state_dir)
    # Added before the app is frozen, so it runs inside `errors` and after `api_key`.
    app.middlewares.append(feed_access)
    app.router.add_get("/nuget/v3/index.json", service_index)
    app.router.add_get(FLAT_CONTAINER + "{lowerid}/index.json", versions_index)
    app.router.add_get(FLAT_CONTAINER + "{lowerid}/{lowerversion}/{filename}", package_file)
