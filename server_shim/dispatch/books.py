"""The server's own bookkeeping failing: what it means, and writes retried while it may pass.

A database error met while running a task is the server's fault, not a target's:
`storage_error` turns it into a `StorageError` that says what happened in words an
operator acts on ("disk full"), retryable when it may pass by itself (a lock held by
another process). `write` retries those a few times, then raises; the task's run then
fails the task with the reason (`TaskCoordinator.abort`).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Final, TypeVar

from server_shim.store import database
from server_shim.store.database import Database
from tentacle.errors import StorageError

T = TypeVar("T")
ATTEMPTS: Final = 4
FIRST_DELAY: Final = 0.25  # seconds; doubled after each failed attempt


def is_bookkeeping(exc: BaseException) -> bool:
    """Whether ``exc`` is the server's own storage failing (not a target's doing)."""
    return (
        isinstance(exc, StorageError)
        or database.is_database_error(exc)
        or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO))
    )


def storage_error(exc: BaseException) -> StorageError:
    """``exc`` as a `StorageError` whose message says what an operator should know."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc) or type(exc).__name__
    full = "full" in text.lower() or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
    if full:
        return StorageError(f"disk full: the server cannot store the task ({text})")
    transient = database.is_transient(exc)
    return StorageError(f"the server's storage failed: {text}", retryable=transient)


async def write(db: Database, fn: Callable[..., T], *args: object) -> T:
    """``db.run(fn, *args)``, retried while its failure is retryable; raises `StorageError`."""
    delay = FIRST_DELAY
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await db.run(fn, *args)
        except Exception as exc:
            if not is_bookkeeping(exc):
                raise
            error = storage_error(exc)
            if not error.retryable or attempt == ATTEMPTS:
                raise error from exc
        await asyncio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")  # the loop returns or raises
