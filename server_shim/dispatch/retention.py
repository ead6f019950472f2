"""Events and finished deliveries older than ``[events] keep_days`` are deleted, hourly.

Every node runs it (deleting is idempotent), in batches of `BATCH` rows per transaction so
that no long transaction holds up the writers; a pending delivery is never deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time

from server_shim.dispatch import books
from server_shim.store import events
from server_shim.store.database import Database
from tentacle.common.logs import event

log = logging.getLogger("server_shim.dispatch.retention")
EVERY_SECONDS = 3600.0
BATCH = 5000
DAY = 86400.0


class Retention:
    """Deletes what `keep_days` no longer keeps."""

    def __init__(self, db: Database, keep_days: float) -> None:
        self.db, self.keep_days = db, keep_days

    async def once(self, now: float | None = None) -> int:
        """One pass; how many rows went (0 when everything is kept forever)."""
        if not self.keep_days:
            return 0
        before = (time.time() if now is None else now) - self.keep_days * DAY
        total = 0
        while True:
            gone = await books.write(self.db, events.prune, before, BATCH)
            total += gone
            if gone < BATCH:
                break
        if total:
            event(log, "events.pruned", rows=total, keep_days=self.keep_days)
        return total

    async def loop(self) -> None:
        """`once` every hour, for as long as the server runs; a failure is logged and retried."""
        while True:
            try:
                await self.once()
            except Exception as exc:
                event(log, "events.prune_failed", logging.WARNING, reason=str(exc))
            await asyncio.sleep(EVERY_SECONDS)
