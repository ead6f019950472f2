"""The reactor: sends what the outbox holds, one delivery per reaction at a time, in order.

How it works. Deliveries are queued in the transactions that record events
(server_shim.store.events), by webhooks and by `reaction fire`. The reactor's loop claims
every reaction's oldest waiting delivery that is due (server_shim.store.delivery_rows),
runs its action (an HTTP request, a script, a deployment), records the attempt and what
follows in one transaction, then looks again. It wakes when a delivery is queued in this
process (`events.subscribe`), when the next retry falls due, and every `POLL_SECONDS`
for what other processes queued (the `package push` command, another node).

    claim head ──▶ action ──▶ 2xx / exit 0 / task created ──▶ succeeded (never sent again)
                         ├──▶ retryable failure ──▶ pending, next_at = backoff or Retry-After
                         └──▶ final, or past the retry window ──▶ failed + event reactionFailed

A server killed mid-attempt recorded nothing: at its next start it frees its own claims
(`release_claims`) and sends again, with the same delivery id. On `close`, running
attempts are cancelled the same way (a script's process group is killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from server_shim.dispatch import books
from server_shim.dispatch.dispatcher import Dispatcher
from server_shim.dispatch.outgoing_http import HttpSender
from server_shim.dispatch.reaction_deploys import Deployer
from server_shim.dispatch.reaction_scripts import ScriptRunner
from server_shim.store import delivery_rows as outbox
from server_shim.store import events
from server_shim.store import project_rows as projects
from server_shim.store.database import Database
from server_shim.store.delivery_rows import Attempt, Due
from tentacle.common.logs import event
from tentacle.protocol.delivery_rules import next_attempt_at
from tentacle.protocol.process import Variable
from tentacle.protocol.reactions import chain_of

log = logging.getLogger("server_shim.dispatch.reactor")
POLL_SECONDS: Final = 1.0
RETRY_FOR: Final = 86400.0  # how long a deployment the database could not store is retried


class Reactor:
    """Sends the outbox's deliveries."""

    def __init__(
        self,
        db: Database,
        dispatcher: Dispatcher,
        *,
        work: Path,
        ca: Path,
        server_url: Callable[[], str],
        node: str = "local",
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.db, self.node, self.rand = db, node, rand
        self.http = HttpSender()
        self.scripts = ScriptRunner(db, work, ca, server_url)
        self.deploys = Deployer(dispatcher)
        self.running: dict[str, asyncio.Task[None]] = {}  # by delivery id
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Free the claims a killed run of this node left, then start sending."""
        freed = await books.write(self.db, outbox.release_claims, self.node)
        if freed:
            event(log, "reactor.claims_freed", deliveries=freed)
        self._loop = asyncio.get_running_loop()
        events.subscribe(self.nudge_threadsafe)
        self._main = asyncio.create_task(self._run())

    def nudge_threadsafe(self) -> None:
        """Something was queued (called from the database thread)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            wake: float | None = None
            try:
                due, wake = await self.db.run(outbox.claim_due, self.node, time.time())
            except Exception as exc:  # the database refused: try again on the next round
                event(log, "reactor.claim_failed", logging.ERROR, reason=books.storage_error(exc).message)
                due = []
            for delivery in due:
                self.running[delivery.delivery_id] = asyncio.create_task(self._deliver(delivery))
            delay = POLL_SECONDS if wake is None else min(POLL_SECONDS, max(0.0, wake - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _deliver(self, due: Due) -> None:
        try:
            attempt = await self._attempt(due)
            if attempt is not None:
                await self._finish(due, attempt)
        except Exception:  # a bug of ours: the claim lapses and the delivery is tried again
            log.exception("reactor.attempt_crashed delivery=%s reaction=%s", due.delivery_id, due.reaction)
        finally:
            self.running.pop(due.delivery_id, None)
            self._wake.set()

    async def _attempt(self, due: Due) -> Attempt | None:
        action = due.document.action
        variables = await self._variables(due)
        if action.http is not None:
            return await self.http.send(due, action.http, variables)
        if action.script is not None:
            return await self.scripts.run(due, action.script, variables)
        assert action.deploy is not None
        return await self.deploys.run(due, action.deploy)

    async def _variables(self, due: Due) -> list[Variable]:
        """The variables of the event's project (templates name them; scripts' output masks them)."""
        project = due.payload.project_name
        if project is None:
            return []
        try:
            process = await self.db.run(projects.get_project, due.space, project)
        except projects.ProjectNotFound:
            return []
        return list(process.variables)

    async def _finish(self, due: Due, attempt: Attempt) -> None:
        next_at = None
        if attempt.status == "retrying":
            http = due.document.action.http
            next_at = next_attempt_at(
                attempt=due.attempt,
                first_at=due.created_at,
                now=time.time(),
                retry_for=http.retry_for_seconds if http is not None else RETRY_FOR,
                retry_after=attempt.retry_after,
                rand=self.rand(),
            )
        state = await books.write(self.db, finish, due, attempt, next_at)
        event(
            log,
            f"delivery.{state}",
            logging.WARNING if state == "failed" else logging.INFO,
            reaction=due.reaction,
            delivery=due.delivery_id,
            attempt=due.attempt,
            code=attempt.response_code or "",
            error=attempt.error or "",
        )

    async def close(self) -> None:
        """Stop: running attempts are cancelled (their deliveries are sent again at the next start)."""
        events.unsubscribe(self.nudge_threadsafe)
        jobs = [job for job in (self._main, *self.running.values()) if job is not None]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await self.http.close()


def finish(conn: sqlite3.Connection, due: Due, attempt: Attempt, next_at: float | None) -> str:
    """Record the attempt; a delivery that failed for good records ``reactionFailed`` with it."""
    state = outbox.finish_attempt(conn, due, attempt, next_at)
    if state == "failed":
        payload = due.payload
        events.record(
            conn,
            "reactionFailed",
            due.space,
            project=payload.project_name,
            release=payload.release_version,
            environments=payload.environment_names,
            tenant=payload.tenant_name,
            machine=payload.machine_name,
            task_id=payload.task_id,
            details={
                "reaction": due.reaction,
                "deliveryId": due.delivery_id,
                "eventKind": payload.kind,
                "eventSeq": payload.seq,
                "attempts": due.attempt,
                "responseCode": attempt.response_code,
                "error": attempt.error or "",
                "chain": chain_of(payload),
            },
        )
    return state
