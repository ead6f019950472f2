"""Pull acquisition: the nearest NuGet mirror first, fast failover, resume, verified bytes.

How it works. A mirror candidate is the URL of a NuGet v3 service index.

- `MirrorRanker` fetches each candidate's service index, which both measures its latency
  and tells where its flat container is (PackageBaseAddress). Latencies are remembered
  for ``ttl`` (10 min), service indexes for ``index_ttl`` (5 min). Candidates sort as:
  not demoted, then measured before still-probing before failed, then the tentacle's own
  (preferred) mirrors, then by latency. A mirror that served bad bytes is demoted (last)
  for ``ttl``.
- `download` tries mirrors in that order. A connection gets ``connect`` seconds and a body
  may go ``stall`` seconds without a byte, so a dead or crawling mirror costs seconds, not
  minutes. A partial is resumed with ``Range: bytes=N-`` and ``If-Range: <validator its
  bytes came with>`` on the same mirror (after a cut) or on the next; a ``200`` answer to
  that means start over. At the end, size and SHA-512 must match the plan: a mismatch
  discards the partial and demotes the mirror. When every mirror failed, `AcquisitionError`
  names each with its reason.
- `Acquirer` is what the task runner calls per package: a cached file costs no network;
  "pull" tries the tentacle's own mirrors for the feed, then the plan's; "push" fetches
  from the server's built-in feed (the same protocol, over the same mutual TLS).

Why blocking HTTP in threads: a package body is the hot path (a 1 GiB file must arrive at
least as fast as curl writes it). A blocking TLS socket decrypts straight into the cache
writer's page-aligned buffers (`PartialWriter`), whose own threads hash and write them
(O_DIRECT) in parallel: no event-loop hops per chunk, no copies, and the event loop stays
free. Every request, probes included, goes through that one small HTTP/1.1 layer
(`http.client`), so there is one set of timeouts and error reasons.

Errors (see tentacle.errors)::

    TentacleError
    └── AcquisitionError      retryable: every source of a package failed
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urljoin, urlsplit

from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.net.failures import CONNECTION_ERRORS, NETWORK_ERRORS
from tentacle.net.pinned import PinnedConnection, in_thread
from tentacle.packages.cache import PackageCache
from tentacle.packages.partial import CacheError, Digest, Partial, PartialWriter
from tentacle.protocol.nuget import InvalidVersion, NuGetVersion
from tentacle.protocol.plan import Plan, PlannedPackage

__all__ = [
    "Acquirer",
    "AcquisitionError",
    "Attempt",
    "DownloadReport",
    "MirrorClient",
    "MirrorRanker",
    "Timeouts",
    "download",
    "package_base_address",
    "package_path",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
MIB = 1024 * 1024
MAX_INDEX_BYTES = 4 * MIB
MAX_REDIRECTS = 5
# A cut that made progress is resumed on the same mirror, up to this many tries in all.
MAX_TRIES_PER_MIRROR = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# nginx (and most servers) title an error page "400 No required SSL certificate was sent".
_ERROR_PAGE_TITLE = re.compile(rb"<title>([^<]{1,200})</title>", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class AcquisitionError(TentacleError):
    """No source could deliver a package; the message names each source and why it failed."""

    retryable = True


class MirrorFailure(Exception):
    """One mirror failed one attempt (internal: collected into AcquisitionError)."""

    def __init__(self, reason: str, *, again: bool = False) -> None:
        """`again`: trying the same mirror once more may work (a cut after progress)."""
        super().__init__(reason)
        self.reason = reason
        self.again = again


@dataclass(frozen=True)
class Timeouts:
    """Seconds a mirror may take: to connect (TLS included), between two reads, to a probe's answer."""

    connect: float = 3.0
    stall: float = 10.0
    probe: float = 5.0


@dataclass(frozen=True)
class MirrorClient:
    """How to reach mirrors: the TLS context (with our client certificate) and the timeouts.

    ``pins`` maps a ``host:port`` to the certificate thumbprints accepted there: the server's
    own feed is pinned like every other call to the server (the CA alone would also accept
    any tentacle's certificate); other mirrors are checked against the CA.
    """

    ssl_context: ssl.SSLContext
    timeouts: Timeouts = Timeouts()
    pins: Mapping[str, frozenset[str]] = field(default_factory=dict)


# --- pure rules ------------------------------------------------------------------------


def package_base_address(index_url: str, document: object) -> str:
    """The PackageBaseAddress of a service index, absolute (a relative @id joins the URL)."""
    resources = document.get("resources") if isinstance(document, dict) else None
    for resource in resources if isinstance(resources, list) else []:
        if not isinstance(resource, dict) or not isinstance(resource.get("@id"), str):
            continue
        if str(resource.get("@type", "")).startswith("PackageBaseAddress/3.0.0"):
            base: str = urljoin(index_url, str(resource["@id"]))
            return base if base.endswith("/") else base + "/"
    raise MirrorFailure("service index has no PackageBaseAddress/3.0.0 resource")


def package_path(pkg: PlannedPackage) -> str:
    """The file's path under a PackageBaseAddress: ``{lowerid}/{lowerversion}/{file_name}``."""
    try:
        version = NuGetVersion.parse(pkg.version).flat_container_form
    except InvalidVersion as exc:
        raise AcquisitionError(f"{pkg.id} {pkg.version}: {exc.message}") from exc
    return "/".join(quote(part, safe="") for part in (pkg.id.lower(), version, pkg.file_name))


def _strong_validator(response: http.client.HTTPResponse) -> str | None:
    """What may go in If-Range: a strong ETag, else Last-Modified (weak ETags may not)."""
    etag = response.getheader("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.getheader("Last-Modified")


def _http_reason(status: int, body: bytes) -> str:
    """'HTTP 400 (No required SSL certificate was sent)': the status and an error page's gist."""
    match = _ERROR_PAGE_TITLE.search(body)
    detail = match.group(1).decode(errors="replace").strip() if match else ""
    detail = detail.removeprefix(str(status)).strip()
    return f"HTTP {status} ({detail})" if detail else f"HTTP {status}"


# --- one blocking HTTP/1.1 layer -------------------------------------------------------


class _Request:
    """One GET (redirects followed), each hop on its own `PinnedConnection`; `cancel` from any thread."""

    def __init__(self, client: MirrorClient, read_timeout: float) -> None:
        """A request whose reads may each wait `read_timeout` seconds for a byte."""
        self.client = client
        self.read_timeout = read_timeout
        self.cancelled = False
        self._conn: PinnedConnection | None = None

    @property
    def sock(self) -> socket.socket | None:
        """The current connection's socket (for reading a body straight into buffers)."""
        return self._conn.sock if self._conn is not None else None

    def open(self, url: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        """The response to GET `url` (after at most MAX_REDIRECTS redirects)."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self._get(url, headers)
            location = response.getheader("Location")
            if response.status not in _REDIRECTS or not location:
                return response
            self.close()
            url = urljoin(url, location)
        raise MirrorFailure(f"more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        """Connect (TLS and pin included) within the connect timeout, send the GET, read the head."""
        parts = urlsplit(url)
        try:
            self._conn = PinnedConnection(
                url,
                self.client.ssl_context,
                connect_timeout=self.client.timeouts.connect,
                io_timeout=self.read_timeout,
                pins=self.client.pins.get(parts.netloc.lower()),
            )
        except ValueError as exc:
            raise MirrorFailure(str(exc)) from exc
        if self.cancelled:
            raise MirrorFailure("cancelled")
        conn = self._conn.open()
        target = parts.path or "/"
        target += f"?{parts.query}" if parts.query else ""
        all_headers = {"Accept-Encoding": "identity", "User-Agent": "tentacle", **headers}
        # No "Connection: close": http.client would then close its socket right after the
        # headers, and the body could not be read from the socket directly (`_Body`).
        conn.request("GET", target, headers=all_headers)
        return conn.getresponse()

    def describe(self, exc: BaseException) -> str:
        """A short reason for this request's failure, as an operator would want to read it."""
        if self._conn is None:
            return str(exc)
        return self._conn.describe(exc)

    def cancel(self) -> None:
        """Stop the request: a read blocked in another thread returns at once."""
        self.cancelled = True
        if self._conn is not None:
            self._conn.abort()

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()


def _fetch_index(client: MirrorClient, url: str) -> object:
    """GET and decode a service index (blocking); failures become MirrorFailure."""
    request = _Request(client, client.timeouts.probe)
    try:
        response = request.open(url, {})
        body = response.read(MAX_INDEX_BYTES)
        if response.status != 200:
            raise MirrorFailure(_http_reason(response.status, body))
        return json.loads(body)
    except ValueError as exc:
        raise MirrorFailure(f"service index is not JSON: {exc}") from exc
    except CONNECTION_ERRORS as exc:
        raise MirrorFailure(request.describe(exc)) from exc
    finally:
        request.close()


# --- ranking ---------------------------------------------------------------------------


@dataclass
class _Measure:
    """What the last probe of a mirror (or the last download from it) found."""

    at: float
    latency: float | None = None
    base: str | None = None
    error: str | None = None


class MirrorRanker:
    """Orders mirror candidates nearest first, by latencies it measures and remembers."""

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        index_ttl: float = 300.0,
        rank_wait: float = 1.0,
        retry_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Remember latencies and demotions for `ttl`, service indexes for `index_ttl`.

        `rank` waits at most `rank_wait` for probes (slower ones go on in the background
        and rank as unknown); a mirror that failed is not probed again for `retry_after`.
        """
        self.ttl = ttl
        self.index_ttl = index_ttl
        self.rank_wait = rank_wait
        self.retry_after = retry_after
        self._clock = clock
        self._measures: dict[str, _Measure] = {}
        self._demoted: dict[str, float] = {}
        self._probing: dict[str, asyncio.Task[_Measure]] = {}

    async def rank(
        self, client: MirrorClient, candidates: Iterable[str], preferred: Collection[str] = ()
    ) -> list[str]:
        """Distinct candidates, best first; those not measured within `ttl` are probed now."""
        unique = list(dict.fromkeys(candidates))
        probes = [self._probe_once(client, url) for url in unique if not self._fresh(url, self.ttl)]
        if probes:
            await asyncio.wait(probes, timeout=self.rank_wait)
        return sorted(unique, key=lambda url: self._key(url, preferred))

    def latency(self, mirror: str) -> float | None:
        """The last measured latency in seconds, or None (never measured, or failing)."""
        measure = self._measures.get(mirror)
        return measure.latency if measure is not None else None

    def is_demoted(self, mirror: str) -> bool:
        """Whether `mirror` served bad bytes within `ttl`."""
        demoted_at = self._demoted.get(mirror)
        return demoted_at is not None and self._clock() - demoted_at < self.ttl

    async def base_address(self, client: MirrorClient, mirror: str) -> str:
        """The mirror's PackageBaseAddress (from a service index at most `index_ttl` old)."""
        measure = self._measures.get(mirror)
        ttl = self.index_ttl if measure is not None and measure.base else self.retry_after
        if measure is None or not self._fresh(mirror, ttl):
            measure = await asyncio.shield(self._probe_once(client, mirror))
        if measure.base is None:
            raise MirrorFailure(measure.error or "no service index")
        return measure.base

    def failed(self, mirror: str, reason: str) -> None:
        """Rank `mirror` behind the healthy ones until it is measured again."""
        known = self._measures.get(mirror)
        self._measures[mirror] = _Measure(self._clock(), base=known.base if known else None, error=reason)

    def demote(self, mirror: str, reason: str) -> None:
        """`mirror` served bytes that do not match: rank it last for `ttl`."""
        self._demoted[mirror] = self._clock()
        event(log, "package.mirror_demoted", logging.WARNING, mirror=mirror, reason=reason)

    async def close(self) -> None:
        """Stop waiting for the probes still under way."""
        for task in list(self._probing.values()):
            task.cancel()
        await asyncio.gather(*self._probing.values(), return_exceptions=True)

    def _fresh(self, mirror: str, ttl: float) -> bool:
        """Whether `mirror` was measured less than `ttl` seconds ago."""
        measure = self._measures.get(mirror)
        return measure is not None and self._clock() - measure.at < ttl

    def _key(self, mirror: str, preferred: Collection[str]) -> tuple[bool, int, bool, float]:
        """Not demoted first, then measured < probing < failed, then preferred, then latency."""
        measure = self._measures.get(mirror)
        state = 1 if measure is None else 0 if measure.latency is not None else 2
        latency = measure.latency if measure is not None and measure.latency is not None else 0.0
        return (self.is_demoted(mirror), state, mirror not in preferred, latency)

    def _probe_once(self, client: MirrorClient, mirror: str) -> asyncio.Task[_Measure]:
        """The probe of `mirror` under way, or a new one."""
        task = self._probing.get(mirror)
        if task is None:
            task = asyncio.create_task(self._probe(client, mirror))
            self._probing[mirror] = task
            task.add_done_callback(lambda _: self._probing.pop(mirror, None))
        return task

    async def _probe(self, client: MirrorClient, mirror: str) -> _Measure:
        """Fetch the service index: its time is the latency, its content the base address."""
        start = self._clock()
        try:
            document = await asyncio.to_thread(_fetch_index, client, mirror)
            base = package_base_address(mirror, document)
            measure = _Measure(self._clock(), self._clock() - start, base)
        except MirrorFailure as exc:
            measure = _Measure(self._clock(), error=exc.reason)
            event(log, "package.mirror_probe_failed", logging.INFO, mirror=mirror, error=exc.reason)
        self._measures[mirror] = measure
        return measure


# --- download --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One request to one mirror: where it resumed, how much came, why it failed."""

    mirror: str
    resumed_from: int
    received: int
    error: str | None = None


@dataclass
class DownloadReport:
    """How a package arrived: the mirror that delivered it and every attempt on the way."""

    digest: Digest
    mirror: str
    attempts: list[Attempt] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def received(self) -> int:
        """Bytes of the package received over the network, over all attempts."""
        return sum(attempt.received for attempt in self.attempts)


async def download(
    pkg: PlannedPackage,
    candidates: Sequence[str],
    partial: Partial,
    client: MirrorClient,
    ranker: MirrorRanker,
    *,
    preferred: Collection[str] = (),
) -> DownloadReport:
    """Fetch `pkg` into `partial` from the best mirror that delivers the right bytes.

    Raises `AcquisitionError` naming every mirror tried and its last reason.
    """
    start = time.monotonic()
    complete = await asyncio.to_thread(_complete_partial, pkg, partial)
    if complete is not None:
        return DownloadReport(complete, mirror="(a complete partial)")
    attempts: list[Attempt] = []
    for mirror in await ranker.rank(client, candidates, preferred):
        digest = await _try_mirror(pkg, mirror, partial, client, ranker, attempts)
        if digest is not None:
            return DownloadReport(digest, mirror, attempts, time.monotonic() - start)
    raise _all_failed(pkg, attempts)


async def _try_mirror(
    pkg: PlannedPackage,
    mirror: str,
    partial: Partial,
    client: MirrorClient,
    ranker: MirrorRanker,
    attempts: list[Attempt],
) -> Digest | None:
    """Up to MAX_TRIES_PER_MIRROR requests to one mirror; the digest, or None to move on."""
    for _ in range(MAX_TRIES_PER_MIRROR):
        transfer: _Transfer | None = None
        try:
            url = await ranker.base_address(client, mirror) + package_path(pkg)
            transfer = _Transfer(pkg, url, partial, client)
            digest = await in_thread(transfer.run, transfer.cancel, "tentacle-pull")
            digest = _verify(pkg, mirror, partial, digest, ranker, resumed=transfer.resumed_from > 0)
        except MirrorFailure as exc:
            attempts.append(
                transfer.attempt(mirror, exc.reason) if transfer else Attempt(mirror, 0, 0, exc.reason)
            )
            event(
                log, "package.mirror_failed", logging.WARNING, package=pkg.id, mirror=mirror, error=exc.reason
            )
            if not exc.again:
                ranker.failed(mirror, exc.reason)
                return None
            continue
        attempts.append(transfer.attempt(mirror, None))
        return digest
    return None


class _Transfer:
    """One GET of a package into its partial, run in a worker thread (`run`)."""

    def __init__(self, pkg: PlannedPackage, url: str, partial: Partial, client: MirrorClient) -> None:
        """A transfer of `pkg` from `url` into `partial`; nothing happens until `run`."""
        self.pkg = pkg
        self.url = url
        self.partial = partial
        self.client = client
        self.resumed_from = 0
        self.received = 0
        self._request = _Request(client, client.timeouts.stall)

    def attempt(self, mirror: str, error: str | None) -> Attempt:
        """This transfer as a finished `Attempt`."""
        return Attempt(mirror, self.resumed_from, self.received, error)

    def cancel(self) -> None:
        """Stop from another thread."""
        self._request.cancel()

    def run(self) -> Digest:
        """Request (resuming when the partial allows), stream into the partial, fsync."""
        try:
            return self._run()
        except CONNECTION_ERRORS as exc:
            reason = self._request.describe(exc)
            if self.received:
                reason = f"cut after {self.received} bytes: {reason}"
            # A cut that made progress is worth resuming here; a stall is not (move on).
            raise MirrorFailure(
                reason, again=self.received > 0 and not isinstance(exc, TimeoutError)
            ) from exc
        finally:
            self._request.close()

    def _run(self) -> Digest:
        """`run` without the translation of network errors."""
        offset = _resume_offset(self.pkg, self.partial)
        validator = self.partial.validator()
        headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset and validator else {}
        response = self._request.open(self.url, headers)
        if response.status == 416:  # the partial is longer than the file: it cannot be right
            self.partial.discard()
            raise MirrorFailure("refused the resume range (HTTP 416); starting over", again=True)
        self.resumed_from = _start_offset(response, self.pkg, offset)
        self.partial.save_validator(_strong_validator(response), self.url)
        writer = PartialWriter(self.partial.path, self.resumed_from)
        try:
            self._receive(response, writer)
        except BaseException:
            writer.close()
            raise
        return writer.finish()

    def _receive(self, response: http.client.HTTPResponse, writer: PartialWriter) -> None:
        """Fill the writer's buffers from the body until the package is complete."""
        body = _Body(response, self._request.sock)
        while writer.size < self.pkg.size:
            if self._request.cancelled:
                raise MirrorFailure("cancelled")
            space = writer.buffer()[: self.pkg.size - writer.size]
            count, error = body.fill(space)
            writer.commit(count)  # what arrived before a cut is kept for the resume
            self.received += count
            if error is not None:
                raise error
            if count < len(space):
                raise MirrorFailure(f"cut after {self.received} bytes: connection closed", again=True)


class _Body:
    """A response body read into the caller's buffers.

    With a known length on a connection http.client keeps open, the bytes after those it
    buffered come straight from the TLS socket, decrypted into the buffer given: the only
    Python work per TLS record is one call. Otherwise (chunked, or a closing connection)
    they come through http.client.
    """

    def __init__(self, response: http.client.HTTPResponse, sock: socket.socket | None) -> None:
        """The body of `response`, whose connection's socket is `sock`."""
        self._pending = b""
        self._read: Callable[[memoryview], int] = response.readinto
        if sock is not None and not response.chunked and response.length and not response.will_close:
            # read1 hands over what http.client read past the headers (or one read's worth).
            self._pending = response.read1(response.length)
            self._read = sock.recv_into

    def fill(self, view: memoryview) -> tuple[int, BaseException | None]:
        """Read into all of `view` unless the body ends first: the count, and any error that stopped it.

        The caller sizes `view` to at most the rest of the body (checked against the headers).
        """
        filled = min(len(view), len(self._pending))
        view[:filled], self._pending = self._pending[:filled], self._pending[filled:]
        read, size = self._read, len(view)
        try:
            while filled < size:
                count = read(view[filled:])
                if not count:
                    break
                filled += count
        except NETWORK_ERRORS as exc:
            return filled, exc
        return filled, None


def _complete_partial(pkg: PlannedPackage, partial: Partial) -> Digest | None:
    """The digest of a partial that already holds the whole package (a crash before the
    rename), or None; a full-size partial with other bytes is discarded."""
    if partial.size() != pkg.size:
        return None
    digest = PartialWriter(partial.path, pkg.size).finish()
    if digest == Digest(pkg.sha512, pkg.size):
        return digest
    partial.discard()
    return None


def _resume_offset(pkg: PlannedPackage, partial: Partial) -> int:
    """Bytes of the partial worth resuming from; 0 (and no partial) when they are not."""
    size = partial.size()
    if size and (size >= pkg.size or partial.validator() is None):
        partial.discard()
        return 0
    return size


def _start_offset(response: http.client.HTTPResponse, pkg: PlannedPackage, offset: int) -> int:
    """Where this response's body starts in the file; MirrorFailure for an unusable answer."""
    if response.status == 206 and offset:
        match = _CONTENT_RANGE.fullmatch(response.getheader("Content-Range") or "")
        if match and match.groups() == (str(offset), str(pkg.size - 1), str(pkg.size)):
            return offset
        raise MirrorFailure(f"answered a resume with {response.getheader('Content-Range')!r}")
    if response.status == 200:
        if response.length is not None and response.length != pkg.size:
            raise MirrorFailure(f"serves {response.length} bytes, the package has {pkg.size}")
        return 0  # a 200 to a Range request: the file changed or ranges are not served
    raise MirrorFailure(_http_reason(response.status, response.read(64 * 1024)))


def _verify(
    pkg: PlannedPackage, mirror: str, partial: Partial, digest: Digest, ranker: MirrorRanker, *, resumed: bool
) -> Digest:
    """The digest when it matches the plan; else the partial goes and the mirror is blamed."""
    if digest == Digest(pkg.sha512, pkg.size):
        return digest
    partial.discard()
    if resumed:
        # The older bytes may be the bad ones (a crash, another mirror): retry whole first.
        raise MirrorFailure("sha512 mismatch after a resume; starting over", again=True)
    ranker.demote(mirror, "sha512 mismatch")
    raise MirrorFailure("sha512 mismatch")


def _all_failed(pkg: PlannedPackage, attempts: list[Attempt]) -> AcquisitionError:
    """The error naming each mirror tried (in the order tried) with its last reason."""
    reasons: dict[str, str] = {}
    for attempt in attempts:
        reasons[attempt.mirror] = attempt.error or "failed"
    listed = "; ".join(f"{mirror}: {reason}" for mirror, reason in reasons.items())
    return AcquisitionError(
        f"{pkg.id} {pkg.version}: {listed or 'no mirror candidates'}",
        details={"package": pkg.id, "version": pkg.version, "mirrors": reasons},
    )


# --- the task runner's entry point ------------------------------------------------------


class Acquirer:
    """Gets a plan's package into the cache: a hit, a pull from mirrors, or the server's feed.

    Call it as ``await acquirer(plan, pkg)``. Each package it returns stays leased (never
    evicted) until `release(plan.task_id)`. `close` stops background probes.
    """

    def __init__(
        self,
        cache: PackageCache,
        ssl_context: ssl.SSLContext,
        local_mirrors: Mapping[str, Sequence[str]] | None = None,
        server_feed_url: str | None = None,
        *,
        server_pins: frozenset[str] = frozenset(),
        ranker: MirrorRanker | None = None,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        """`local_mirrors`: the tentacle's own mirrors per feed name, tried before the plan's."""
        self.cache = cache
        pins = {}
        if server_feed_url and server_pins:
            pins[urlsplit(server_feed_url).netloc.lower()] = server_pins
        self.client = MirrorClient(ssl_context, timeouts, pins)
        self.local_mirrors = {feed: tuple(urls) for feed, urls in (local_mirrors or {}).items()}
        self.server_feed_url = server_feed_url
        self.ranker = ranker or MirrorRanker()
        self.reports: dict[str, DownloadReport] = {}
        self._leases: dict[str, ExitStack] = {}

    async def __call__(self, plan: Plan, pkg: PlannedPackage) -> Path:
        """The verified file of `pkg`, leased for `plan`'s task; AcquisitionError if none came."""
        leases = self._leases.setdefault(plan.task_id, ExitStack())
        try:
            leases.enter_context(self.cache.lease(pkg.sha512))
            return await self.cache.get(pkg, self._fetch)
        except CacheError as exc:
            raise AcquisitionError(f"{pkg.id} {pkg.version}: {exc.message}") from exc

    def candidates(self, pkg: PlannedPackage) -> tuple[list[str], list[str]]:
        """The sources to try for `pkg`, and which of them are preferred."""
        if pkg.acquisition == "push":
            server = [self.server_feed_url] if self.server_feed_url else []
            return server, server
        local = list(self.local_mirrors.get(pkg.feed, ()))
        return list(dict.fromkeys([*local, *pkg.mirrors])), local

    def release(self, task_id: str) -> None:
        """The task ended: its packages may be evicted again."""
        leases = self._leases.pop(task_id, None)
        if leases is not None:
            leases.close()

    async def close(self) -> None:
        """Stop background probes (idempotent)."""
        await self.ranker.close()

    async def _fetch(self, pkg: PlannedPackage, partial: Partial) -> Digest:
        """The cache's fetch: download from the package's sources, log how it went."""
        candidates, preferred = self.candidates(pkg)
        if not candidates and pkg.acquisition == "push":
            raise AcquisitionError(
                f"{pkg.id} {pkg.version}: pushed, but there is no server feed to fetch it from"
            )
        report = await download(pkg, candidates, partial, self.client, self.ranker, preferred=preferred)
        self.reports[pkg.sha512] = report
        seconds = max(report.seconds, 1e-9)
        event(
            log,
            "package.downloaded",
            package=pkg.id,
            version=pkg.version,
            mirror=report.mirror,
            bytes=report.received,
            seconds=f"{seconds:.2f}",
            MBps=f"{report.received / seconds / 1e6:.0f}",
        )
        return report.digest
