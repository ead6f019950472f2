"""The download of one package from mirrors: fast failover, resume, verified bytes.

How it works. `download` tries the mirrors in the order `MirrorRanker` gives. A
connection gets ``connect`` seconds and a body may go ``stall`` seconds without a byte
(tentacle.packages.mirror_client), so a dead or crawling mirror costs seconds, not
minutes. A partial is resumed with ``Range: bytes=N-`` and ``If-Range: <validator its
bytes came with>`` on the same mirror (after a cut) or on the next; a ``200`` answer to
that means start over. At the end, size and SHA-512 must match the plan: a mismatch
discards the partial and demotes the mirror. When every mirror failed, `AcquisitionError`
names each with its reason; it is `retryable` when every mirror's last failure may pass
(unreachable, cut, HTTP 5xx or 429), not when one refused us or served other bytes.

The body is read in a worker thread straight from the TLS socket into the partial
writer's buffers (`_Body`, `PartialWriter`): no event-loop hop and no copy per chunk.

Errors (see tentacle.errors)::

    TentacleError
    └── AcquisitionError      every source of a package failed (retryable when each may recover)
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import re
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tentacle.common.logs import event
from tentacle.errors import TentacleError
from tentacle.net.failures import CONNECTION_ERRORS, NETWORK_ERRORS
from tentacle.net.pinned import in_thread
from tentacle.packages.mirror_client import (
    MirrorClient,
    MirrorFailure,
    MirrorRequest,
    http_reason,
    network_failure,
    transient_status,
)
from tentacle.packages.mirror_ranking import MirrorRanker
from tentacle.packages.partial import Digest, Partial, PartialWriter
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion
from tentacle.protocol.plan import PlannedPackage

__all__ = [
    "AcquisitionError",
    "Attempt",
    "DownloadReport",
    "PushCut",
    "download",
    "package_path",
]

log = logging.getLogger(__name__)

# A cut that made progress is resumed on the same mirror, up to this many tries in all.
MAX_TRIES_PER_MIRROR = 3
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class AcquisitionError(TentacleError):
    """No source could deliver a package; the message names each source and why it failed.

    ``retryable``: every source failed in a way that may pass (trying later may work).
    """

    def __init__(
        self, message: str, *, details: dict[str, Any] | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message, details=details)
        self.retryable = retryable


class PushCut(AcquisitionError):
    """The server's push to a listening tentacle was cut; the partial keeps what came."""


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


@dataclass(frozen=True)
class Attempt:
    """One request to one mirror: where it resumed, how much came, why it failed."""

    mirror: str
    resumed_from: int
    received: int
    error: str | None = None
    transient: bool = False


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
        try:
            url = await ranker.base_address(client, mirror) + package_path(pkg)
        except MirrorFailure as exc:  # what the ranker knows already: no news to tell it
            _failed(pkg, Attempt(mirror, 0, 0, exc.reason, transient=exc.transient), attempts)
            return None
        transfer = _Transfer(pkg, url, partial, client)
        try:
            digest = await in_thread(transfer.run, transfer.cancel, "tentacle-pull")
            digest = _verify(pkg, mirror, partial, digest, ranker, resumed=transfer.resumed_from > 0)
        except MirrorFailure as exc:
            _failed(pkg, transfer.attempt(mirror, exc), attempts)
            if not exc.again:
                ranker.failed(mirror, exc.reason, transient=exc.transient)
                return None
            continue
        attempts.append(transfer.attempt(mirror, None))
        return digest
    return None


def _failed(pkg: PlannedPackage, attempt: Attempt, attempts: list[Attempt]) -> None:
    """Record and log one failed attempt."""
    attempts.append(attempt)
    mirror, error = attempt.mirror, attempt.error
    event(log, "package.mirror_failed", logging.WARNING, package=pkg.id, mirror=mirror, error=error)


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
        self._request = MirrorRequest(client, client.timeouts.stall)

    def attempt(self, mirror: str, failure: MirrorFailure | None) -> Attempt:
        """This transfer as a finished `Attempt` (with how it failed, if it did)."""
        if failure is None:
            return Attempt(mirror, self.resumed_from, self.received)
        return Attempt(mirror, self.resumed_from, self.received, failure.reason, failure.transient)

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
            again = self.received > 0 and not isinstance(exc, TimeoutError)
            raise network_failure(reason, exc, again=again) from exc
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
    status = response.status
    raise MirrorFailure(http_reason(status, response.read(64 * 1024)), transient=transient_status(status))


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
    transient: dict[str, bool] = {}
    for attempt in attempts:
        reasons[attempt.mirror] = attempt.error or "failed"
        transient[attempt.mirror] = attempt.transient
    listed = "; ".join(f"{mirror}: {reason}" for mirror, reason in reasons.items())
    return AcquisitionError(
        f"{pkg.id} {pkg.version}: {listed or 'no mirror candidates'}",
        details={"package": pkg.id, "version": pkg.version, "mirrors": reasons},
        retryable=bool(transient) and all(transient.values()),
    )
