"""Pull acquisition: the nearest NuGet mirror first, fast failover, resume, verified bytes.

How it works. `Acquirer` is what the task runner calls per package: a cached file costs
no network; "pull" tries the tentacle's own mirrors for the feed, then the plan's; "push"
fetches from the server's built-in feed (the same protocol, over the same mutual TLS).
A fetch from the server that fails in a way that may pass (the server restarting, the
connection cut, HTTP 5xx) is tried again, with the polling connection's backoff (1, 2,
4 ... 60 s, jittered), for as long as the task wants the package (its cancellation
stops it), resuming the partial each time; so is a push cut under it. Mirrors are failed
over fast instead, and the last failure fails the acquisition.
The pieces it drives:

- tentacle.packages.mirror_ranking: `MirrorRanker` orders the mirror candidates (URLs
  of NuGet v3 service indexes) nearest first, by latencies it measures and remembers,
  and demotes a mirror that served bad bytes.
- tentacle.packages.download: `download` tries the mirrors in that order, resumes a
  partial, checks size and SHA-512 against the plan, and raises `AcquisitionError`
  naming every mirror tried when none delivered.
- tentacle.packages.mirror_client: one small blocking HTTP/1.1 layer, in worker threads,
  with short timeouts (a body is read straight into the cache writer's buffers).
- tentacle.packages.cache: the verified files, shared downloads and leases.

Errors (see tentacle.errors; this one is defined in tentacle.packages.download)::

    TentacleError
    └── AcquisitionError      every source of a package failed (retryable when each may recover)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from tentacle.common.logs import event
from tentacle.packages.cache import PackageCache
from tentacle.packages.download import AcquisitionError, DownloadReport, download
from tentacle.packages.mirror_client import MirrorClient, Timeouts
from tentacle.packages.mirror_ranking import MirrorRanker
from tentacle.packages.partial import CacheError, Digest, Partial
from tentacle.protocol.backoff import Backoff
from tentacle.protocol.plan import Plan, PlannedPackage

__all__ = ["Acquirer"]

log = logging.getLogger(__name__)


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
        timeouts: Timeouts = Timeouts(),  # noqa: B008 - frozen (immutable): one shared default is safe
        backoff: Backoff | None = None,
    ) -> None:
        """`local_mirrors`: the tentacle's own mirrors per feed name, tried before the plan's;
        ``backoff``: the schedule of a fetch from the server tried again (a fresh one per package)."""
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
        self._backoff = backoff

    async def __call__(self, plan: Plan, pkg: PlannedPackage) -> Path:
        """The verified file of `pkg`, leased for `plan`'s task; AcquisitionError if none came.

        A plan that forces package redeployment gets every package fetched again, cached or not.
        """
        leases = self._leases.setdefault(plan.task_id, ExitStack())
        try:
            leases.enter_context(self.cache.lease(pkg.sha512))
        except CacheError as exc:
            raise AcquisitionError(f"{pkg.id} {pkg.version}: {exc.message}") from exc
        backoff = self._backoff or Backoff()
        fresh = bool(plan.force_package_redeployment)
        while True:
            try:
                return await self._get(pkg, fresh)
            except AcquisitionError as exc:
                if pkg.acquisition != "push" or not exc.retryable:
                    raise
                delay = backoff.next_delay()
                event(
                    log,
                    "package.fetch_retry",
                    logging.WARNING,
                    package=pkg.id,
                    version=pkg.version,
                    retry_in=f"{delay:.1f}",
                    reason=exc.message,
                )
                await asyncio.sleep(delay)

    async def _get(self, pkg: PlannedPackage, fresh: bool) -> Path:
        """One try: the cached file (unless `fresh`), a download under way (a push), or a new fetch."""
        try:
            return await self.cache.get(pkg, self._fetch, fresh=fresh)
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
