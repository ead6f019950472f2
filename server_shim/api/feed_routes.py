"""The built-in feed over HTTPS: a NuGet v3 server.

GET    /nuget/v3/index.json                                          service index (public)
GET    /nuget/v3/flatcontainer/{lowerid}/index.json                  {"versions": [...]}
GET    /nuget/v3/flatcontainer/{lowerid}/{lowerversion}/{filename}   the file (Range, If-Range)
GET    /nuget/v3/registration[-semver1]/{lowerid}/...                registrations (catalog_routes)
GET    /nuget/v3/search?q=&skip=&take=&prerelease=&semVerLevel=      search (catalog_routes)
PUT    /nuget/v3/package                                             push, multipart (publish_routes)
DELETE /nuget/v3/package/{id}/{version}                              delete (publish_routes)
GET    /nuget/v2/Search()...                                         `nuget list` (legacy_feed_routes)

Who may call which is `feed_auth`'s job (a middleware for /nuget/ paths). Every URL in a
document is built from the scheme and host the caller used, so a client that reached the
server as https://localhost:8443 is sent there again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from server_shim.api import catalog_routes, legacy_feed_routes, publish_routes
from server_shim.api.feed_auth import feed_access
from server_shim.api.middleware import DB, answer
from server_shim.api.publish_routes import FEED_DIR
from server_shim.store import feed_store as feed
from tentacle.errors import NotFound
from tentacle.protocol import nuget_documents as documents
from tentacle.protocol.nuget_documents import FeedUrls
from tentacle.protocol.nuget_versions import InvalidVersion

log = logging.getLogger("server_shim.api.feed_routes")
FLAT_CONTAINER = "/nuget/v3/flatcontainer/"
_FILE_CHUNK = 1024 * 1024
_HIGH_WATER = 2 * 1024 * 1024
_OCTETS = "application/octet-stream"  # never a guess from the name: .tar.gz is not gzip-encoded


def feed_urls(request: web.Request) -> FeedUrls:
    """This server's feed URLs, as the caller reached it."""
    origin = f"{request.scheme}://{request.host}"
    base = f"{origin}/nuget/v3/"
    return FeedUrls(base, publish=base + "package", search=base + "search", legacy=f"{origin}/nuget/v2/")


class PackageFileResponse(web.FileResponse):
    """A FileResponse that honours an If-Range holding an entity-tag, and sends fast over TLS.

    aiohttp reads If-Range as a date only, so a stale entity-tag would still get the
    range; RFC 9110 says a validator that does not match means the whole file (200).
    The ETag compared is the one FileResponse sends ('"{mtime_ns:x}-{size:x}"'; a test
    resumes with it, so a change of that format in aiohttp fails loudly).

    Sending: over TLS there is no sendfile, and asyncio's fallback writes 256 KiB at a time
    into a TLS transport that pauses its writer at 64 KiB, so every chunk waited for the
    socket to drain (a fifth of nginx's throughput on the feed benchmark). `_sendfile`
    (aiohttp's hook for the body) instead reads the next 1 MiB in a thread while the last
    is written, with the transport allowed 2 MiB in flight: at most 3 MiB per download.
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

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        """Write `count` bytes of `fobj` from `offset`: reading ahead, writing with a deep buffer."""
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_HIGH_WATER // 4)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, fobj.seek, offset)
        pending = loop.run_in_executor(None, fobj.read, min(_FILE_CHUNK, count))
        while count > 0:
            chunk = await pending
            if not chunk:
                break
            count -= len(chunk)
            if count > 0:
                pending = loop.run_in_executor(None, fobj.read, min(_FILE_CHUNK, count))
            await writer.write(chunk)
        await writer.drain()
        return writer


async def service_index(request: web.Request) -> web.Response:
    """The service index: every resource of this server, as the caller reached it."""
    return answer(documents.service_index(feed_urls(request)))


async def versions_index(request: web.Request) -> web.Response:
    """The versions of one package, lowercase, in NuGet order."""
    lower_id = request.match_info["lowerid"]
    found = await request.app[DB].run(feed.versions, lower_id)
    if not found:
        raise NotFound(f"package {lower_id} is not in the built-in feed")
    return answer(documents.versions_index(found))


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


def add_routes(app: web.Application, feed_dir: Path, max_package_bytes: int) -> None:
    """Mount the feed on the API app, serving the built-in feed in `feed_dir`."""
    # Added before the app is frozen, so it runs inside `errors` and after `api_key`.
    app.middlewares.append(feed_access)
    app.router.add_get("/nuget/v3/index.json", service_index)
    app.router.add_get(FLAT_CONTAINER + "{lowerid}/index.json", versions_index)
    app.router.add_get(FLAT_CONTAINER + "{lowerid}/{lowerversion}/{filename}", package_file)
    catalog_routes.add_routes(app, feed_urls)
    publish_routes.add_routes(app, feed_dir, max_package_bytes)
    legacy_feed_routes.add_routes(app, feed_urls)
