"""Push and delete, as NuGet's PackagePublish/2.0.0 resource does them.

PUT    /nuget/v3/package (and with a trailing '/', which `nuget push` sends)
       multipart/form-data whose first part is the package: 201 with what was stored; 409 when
       that id and version exist; 400 naming why the package is refused; 413 over the size limit.
DELETE /nuget/v3/package/{id}/{version}: 204; 404 when absent; 409 naming the releases that pin it.

The upload streams to a locked staging file in the feed folder (feed_staging) in 1 MiB
writes done off the event loop, counted against the limit as it arrives; it is never held
whole in memory. It is identified and checked from that copy (package_checks), then
recorded (feed_store). Whatever happens, the staging file is gone when the handler returns:
moved into the feed, or removed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path, PurePosixPath

from aiohttp import BodyPartReader, web

from server_shim.api.feed_auth import FEED_CALLER
from server_shim.api.middleware import DB, answer
from server_shim.store import feed_store as feed
from server_shim.store.feed_staging import Staging
from server_shim.store.package_checks import PackageError
from tentacle.common.logs import event
from tentacle.protocol.plan import PackageRef

log = logging.getLogger("server_shim.api.publish_routes")
MAX_PACKAGE_BYTES = web.AppKey("max_package_bytes", int)
FEED_DIR = web.AppKey("feed_dir", Path)
PUBLISH = "/nuget/v3/package"
_BUFFER = 1024 * 1024
_MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the package
_ENDINGS = (".nupkg", ".zip", ".tar.gz", ".tgz")


def _too_large(limit: int) -> feed.PackageTooLarge:
    return feed.PackageTooLarge(f"the package is larger than the {limit} bytes this feed takes")


async def _package_part(request: web.Request) -> BodyPartReader:
    try:
        reader = await request.multipart()
        part = await reader.next()
    except (AssertionError, ValueError, KeyError) as exc:  # aiohttp's words for "not multipart"
        raise PackageError(
            "the body must be multipart/form-data whose first part is the package (as nuget push sends it)"
        ) from exc
    if not isinstance(part, BodyPartReader):
        raise PackageError("the multipart body holds no package part")
    return part


def _file_name(part: BodyPartReader) -> str:
    """The name to judge the file by: the part's file name if it is a package's, else package.nupkg."""
    name = PurePosixPath((part.filename or "").replace("\\", "/")).name
    return name if name.lower().endswith(_ENDINGS) else "package.nupkg"


async def _receive(part: BodyPartReader, staging: Staging, limit: int) -> None:
    """Stream the part into the staging file, refusing as soon as it passes the limit."""
    buffer = bytearray()
    try:
        while chunk := await part.read_chunk(_BUFFER):
            if staging.size + len(buffer) + len(chunk) > limit:
                raise _too_large(limit)
            buffer += chunk
            if len(buffer) >= _BUFFER:
                data, buffer = buffer, bytearray()
                await asyncio.to_thread(staging.write, data)
    except ConnectionError as exc:
        raise PackageError("the upload ended before the package did") from exc
    await asyncio.to_thread(staging.write, buffer)


async def push_package(request: web.Request) -> web.Response:
    """Take one package into the built-in feed."""
    limit = request.app[MAX_PACKAGE_BYTES]
    if request.content_length is not None and request.content_length > limit + _MULTIPART_SLACK:
        raise _too_large(limit)
    feed_dir = request.app[FEED_DIR]
    part = await _package_part(request)
    name = _file_name(part)
    staging = await asyncio.to_thread(Staging, feed_dir)
    try:
        await _receive(part, staging, limit)
        found = await asyncio.to_thread(lambda: feed.candidate(staging.finish(), name))
        ref: PackageRef = await request.app[DB].run(feed.record, feed_dir, found, False)
    finally:
        await asyncio.to_thread(staging.close)
    caller = request.get(FEED_CALLER, "")
    event(log, "package.pushed", id=ref.id, version=ref.version, size=ref.size, by=caller)
    body = {"id": ref.id, "version": ref.version, "sha512": ref.sha512, "size": ref.size}
    return answer(body, 201)


async def delete_package(request: web.Request) -> web.Response:
    """Remove one version, unless a release pins it."""
    feed_dir = request.app[FEED_DIR]
    package_id, version = request.match_info["id"], request.match_info["version"]
    ref = await request.app[DB].run(feed.delete_version, package_id, version)
    await asyncio.to_thread(feed.remove_file, feed_dir, ref)
    event(log, "package.deleted", id=ref.id, version=ref.version, by=request.get(FEED_CALLER, ""))
    return web.Response(status=204)


def add_routes(app: web.Application, feed_dir: Path, max_package_bytes: int) -> None:
    """Mount push and delete of the feed in `feed_dir`."""
    app[FEED_DIR] = feed_dir
    app[MAX_PACKAGE_BYTES] = max_package_bytes
    for path in (PUBLISH, PUBLISH + "/"):
        app.router.add_put(path, push_package)
        app.router.add_post(path, push_package)
    app.router.add_delete(PUBLISH + "/{id}/{version}", delete_package)
