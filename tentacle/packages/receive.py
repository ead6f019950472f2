"""Push to a listening tentacle: the server sends a package's bytes to our listening port.

How it works. For a package whose acquisition is "push", the server (pinned, as for every
request on this port) calls, before it opens the acquisition gate::

    HEAD /packages/v1/{taskId}/{sha512}
        200                       the file is in the cache already: nothing to send
        404 + Tentacle-Partial-Length: N
                                  N bytes of it are here (0: none); send the rest
    PUT  /packages/v1/{taskId}/{sha512}
        Tentacle-Offset: N        the body starts at byte N of the file
        Tentacle-Encoding: zstd   (optional) the body is one zstd stream of those bytes
        200 {"state": "cached"}   the whole file arrived, matched size and SHA-512, is stored
        409 + Tentacle-Partial-Length
                                  N is not where our partial ends: HEAD again
        422                       the bytes do not match the plan (the partial is dropped)

The package must be one of the task's plan (the task was started first), so the plan
gives its size and hash and nothing else can be written. The bytes go through the same
`PackageCache.get` as a pull: into the partial, hashed as they are written, verified,
fsynced, renamed. A cut keeps the partial, and the server's next PUT resumes it. If the
push never arrives, the acquisition falls back to fetching from the server's feed; one
that waited for a push that was cut (`PushCut`, retryable) fetches, with its backoff.

Why a header of our own rather than Content-Encoding: aiohttp decodes request bodies by
Content-Encoding itself and, on Python 3.11, has no zstd; the body here is ours to decode,
in bounded pieces, checked against the plan's size as it grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tentacle.common.logs import event
from tentacle.protocol.plan import PlannedPackage
from tentacle.protocol.push_wire import ENCODING, OFFSET, PACKAGES_PATH, PARTIAL_LENGTH

if TYPE_CHECKING:  # imported when the first push arrives: an idle listener never needs them
    from tentacle.packages.cache import PackageCache
    from tentacle.packages.partial import Digest, Partial, PartialWriter

__all__ = ["PackageReceiver"]

log = logging.getLogger(__name__)

# Bytes handed to the writer thread at once, and the compressed piece decoded at once
# (a zstd frame expands at most ~32,000 times: a piece's output stays bounded).
_BATCH = 4 * 1024 * 1024
_PIECE = 64 * 1024

# How a cut body shows: the connection went, or the payload ended before its length.
CUT = (OSError, EOFError, HttpProcessingError)

Lookup = Callable[[str, str], PlannedPackage | None]


class _BadBody(Exception):
    """The body is not the plan's bytes (too long, or not zstd)."""


def _problem(status: int, code: str, message: str, partial: int | None = None) -> web.Response:
    headers = {PARTIAL_LENGTH: str(partial)} if partial is not None else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class PackageReceiver:
    """The routes that take pushed packages into the cache."""

    def __init__(self, cache: Callable[[], PackageCache], lookup: Lookup) -> None:
        """`cache()` gives the package cache; `lookup(task_id, sha512)` a running task's package, or None."""
        self._cache = cache
        self.lookup = lookup

    @property
    def cache(self) -> PackageCache:
        """The package cache (built on first use)."""
        return self._cache()

    def add_routes(self, app: web.Application) -> None:
        """HEAD and PUT on `PACKAGES_PATH`."""
        app.router.add_route("HEAD", PACKAGES_PATH, self.head)
        app.router.add_put(PACKAGES_PATH, self.put)

    def _package(self, request: web.Request) -> PlannedPackage | web.Response:
        from tentacle.packages.cache import check_sha512
        from tentacle.packages.partial import CacheError

        task_id, sha512 = request.match_info["taskId"], request.match_info["sha512"]
        try:
            check_sha512(sha512)
        except CacheError as exc:
            return _problem(400, "bad-package", exc.message)
        pkg = self.lookup(task_id, sha512)
        if pkg is None:
            return _problem(
                404, "unknown-package", f"task {task_id[:80]!r} plans no package with that sha512"
            )
        return pkg

    async def head(self, request: web.Request) -> web.Response:
        """Whether the package is here, or how much of it."""
        pkg = self._package(request)
        if isinstance(pkg, web.Response):
            return pkg
        if self.cache.path_if_cached(pkg.sha512) is not None:
            return web.Response(status=200)
        return web.Response(status=404, headers={PARTIAL_LENGTH: str(self.cache.partial(pkg.sha512).size())})

    async def put(self, request: web.Request) -> web.Response:
        """Receive (the rest of) a package into the cache."""
        from tentacle.packages.download import AcquisitionError, PushCut
        from tentacle.packages.partial import CacheError

        pkg = self._package(request)
        if isinstance(pkg, web.Response):
            return pkg
        encoding = request.headers.get(ENCODING, "identity")
        if encoding not in ("identity", "zstd"):
            return _problem(
                400, "bad-encoding", f"{ENCODING}: must be identity or zstd, not {encoding[:40]!r}"
            )
        try:
            offset = int(request.headers.get(OFFSET, "0"))
        except ValueError:
            return _problem(400, "bad-offset", f"{OFFSET}: must be an integer")
        have = self.cache.partial(pkg.sha512).size()
        if offset != 0 and offset != have:
            return _problem(409, "wrong-offset", f"the partial holds {have} bytes, not {offset}", have)
        if not 0 <= offset <= pkg.size:
            return _problem(400, "bad-offset", f"{OFFSET}: must be 0-{pkg.size}")

        async def fetch(planned: PlannedPackage, partial: Partial) -> Digest:
            try:
                return await _receive(request, planned, partial, offset, encoding == "zstd")
            except CUT as exc:  # whoever waits for this download (an acquisition) hears it may retry
                raise PushCut(
                    f"the server's push was cut: {exc or type(exc).__name__}", retryable=True
                ) from exc

        try:
            path = await self.cache.get(pkg, fetch)
        except PushCut as exc:
            kept = self.cache.partial(pkg.sha512).size()
            event(log, "package.push_cut", logging.WARNING, package=pkg.id, kept=kept, reason=exc.message)
            return _problem(400, "cut", exc.message, kept)
        except AcquisitionError as exc:  # the download this push joined (a fetch from the feed) failed
            return _problem(503, "unavailable", exc.message)
        except _BadBody as exc:
            return _problem(422, "bad-body", str(exc))
        except CacheError as exc:
            event(log, "package.push_refused", logging.WARNING, package=pkg.id, reason=exc.message)
            return _problem(422, "mismatch", exc.message)
        event(log, "package.pushed", package=pkg.id, version=pkg.version, offset=offset)
        return web.json_response({"state": "cached", "path": Path(path).name})


async def _receive(
    request: web.Request, pkg: PlannedPackage, partial: Partial, offset: int, zstd: bool
) -> Digest:
    """Append the body to the partial (decoding zstd), then the digest of the whole file."""
    from tentacle.packages.partial import CacheError, PartialWriter

    writer = await asyncio.to_thread(PartialWriter, partial.path, offset)
    decode = _decoder(pkg, offset) if zstd else _plain(pkg, offset)
    # Chunks are kept as they arrive (no copy) and handed to a thread a batch at a time,
    # while the next batch is read: the writer copies each byte once, into its buffers.
    writing: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    size = 0
    try:
        try:
            async for chunk in request.content.iter_any():
                batch.append(chunk)
                size += len(chunk)
                if size >= _BATCH:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(asyncio.to_thread(_write, writer, decode, batch))
                    batch, size = [], 0
        except CUT:
            # What arrived before the cut is a prefix of the file: keep it for the resume.
            with contextlib.suppress(_BadBody, CacheError):
                if writing is not None:
                    await writing
                await asyncio.to_thread(_write, writer, decode, batch)
            raise
        if writing is not None:
            await writing
        await asyncio.to_thread(_write, writer, decode, batch, True)
    except _BadBody:
        await _settle(writing)
        await asyncio.to_thread(writer.close)
        partial.discard()  # not the plan's bytes: nothing of this body is worth resuming
        raise
    except BaseException:
        await _settle(writing)
        await asyncio.to_thread(writer.close)  # keeps the bytes written so far
        raise
    return await asyncio.to_thread(writer.finish)


async def _settle(writing: asyncio.Future[None] | None) -> None:
    """Wait for a batch still being written (its error, if any, is already handled)."""
    if writing is not None:
        with contextlib.suppress(BaseException):
            await asyncio.shield(writing)


Decode = Callable[[bytes, bool], bytes]


def _plain(pkg: PlannedPackage, offset: int) -> Decode:
    room = [pkg.size - offset]

    def decode(data: bytes, last: bool) -> bytes:
        room[0] -= len(data)
        if room[0] < 0:
            raise _BadBody(f"the body runs past the planned size of {pkg.size} bytes")
        return data

    return decode


def _decoder(pkg: PlannedPackage, offset: int) -> Decode:
    import zstandard  # only a push with zstd needs it

    stream = zstandard.ZstdDecompressor().decompressobj()
    room = [pkg.size - offset]

    def decode(data: bytes, last: bool) -> bytes:
        out = bytearray()
        try:
            for start in range(0, len(data), _PIECE):
                out += stream.decompress(data[start : start + _PIECE])
                if len(out) > room[0]:
                    raise _BadBody(f"the body decodes past the planned size of {pkg.size} bytes")
        except zstandard.ZstdError as exc:
            raise _BadBody(f"the body is not a zstd stream: {exc}") from exc
        if last and not stream.eof and room[0] - len(out) > 0:
            raise _BadBody("the zstd stream ends early")
        room[0] -= len(out)
        return bytes(out)

    return decode


def _write(writer: PartialWriter, decode: Decode, chunks: list[bytes], last: bool = False) -> None:
    for i, chunk in enumerate(chunks):
        writer.write(decode(chunk, last and i == len(chunks) - 1))
    if last and not chunks:
        writer.write(decode(b"", True))
