"""Mirror ranking: the nearest NuGet mirror first, by latencies measured and remembered.

How it works. A mirror candidate is the URL of a NuGet v3 service index. `MirrorRanker`
fetches each candidate's service index, which both measures its latency and tells where
its flat container is (PackageBaseAddress). Latencies are remembered for ``ttl``
(10 min), service indexes for ``index_ttl`` (5 min). Candidates sort as: not demoted,
then measured before still-probing before failed, then the tentacle's own (preferred)
mirrors, then by latency. A mirror that served bad bytes is demoted (last) for ``ttl``.
Probes are requests like any other (tentacle.packages.mirror_client), run in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from urllib.parse import urljoin

from tentacle.common.logs import event
from tentacle.net.failures import CONNECTION_ERRORS
from tentacle.packages.mirror_client import (
    MirrorClient,
    MirrorFailure,
    MirrorRequest,
    http_reason,
    network_failure,
    transient_status,
)

__all__ = ["MirrorRanker", "package_base_address"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_INDEX_BYTES = 4 * MIB


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


def _fetch_index(client: MirrorClient, url: str) -> object:
    """GET and decode a service index (blocking); failures become MirrorFailure."""
    request = MirrorRequest(client, client.timeouts.probe)
    try:
        response = request.open(url, {})
        body = response.read(MAX_INDEX_BYTES)
        if response.status != 200:
            status = response.status
            raise MirrorFailure(http_reason(status, body), transient=transient_status(status))
        return json.loads(body)
    except ValueError as exc:
        raise MirrorFailure(f"service index is not JSON: {exc}") from exc
    except CONNECTION_ERRORS as exc:
        raise network_failure(request.describe(exc), exc) from exc
    finally:
        request.close()


@dataclass
class _Measure:
    """What the last probe of a mirror (or the last download from it) found."""

    at: float
    latency: float | None = None
    base: str | None = None
    error: str | None = None
    transient: bool = False  # the error may pass (see MirrorFailure)


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
            raise MirrorFailure(measure.error or "no service index", transient=measure.transient)
        return measure.base

    def failed(self, mirror: str, reason: str, *, transient: bool = False) -> None:
        """Rank `mirror` behind the healthy ones until it is measured again."""
        known = self._measures.get(mirror)
        base = known.base if known else None
        self._measures[mirror] = _Measure(self._clock(), base=base, error=reason, transient=transient)

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
            measure = _Measure(self._clock(), error=exc.reason, transient=exc.transient)
            event(log, "package.mirror_probe_failed", logging.INFO, mirror=mirror, error=exc.reason)
        self._measures[mirror] = measure
        return measure
