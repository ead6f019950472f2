"""The one thread that writes task state, so that no fsync or file write blocks the event loop.

Saves of task.json (each with an fsync), log lines, a new task's folder and a forgotten
task's folder all go through `StateWriter.submit`, and run one at a time in the order
they were submitted. That order is what the runner relies on: a task's saves never
overtake each other, a save records the log position of the lines written before it,
and a folder is made before the first save into it. Reads, script files and work
folders (which may be large) use other worker threads.

The thread is a plain worker of a `ThreadPoolExecutor`: it is not a daemon, so the
interpreter lets a write in progress end before it exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")


class StateWriter:
    """Runs blocking writes one at a time, in submission order, off the event loop."""

    def __init__(self) -> None:
        """A writer whose thread starts with the first write."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tentacle-state")

    def submit(self, write: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
        """Queue ``write(*args)`` after every write submitted before; its future on this loop."""
        return asyncio.get_running_loop().run_in_executor(self._pool, write, *args)

    async def run(self, write: Callable[..., _T], *args: object) -> _T:
        """Queue ``write(*args)`` and wait for its result."""
        return await self.submit(write, *args)

    async def drain(self) -> None:
        """Return once every write submitted so far has ended."""
        await self.submit(_nothing)


def _nothing() -> None:
    """A write that writes nothing: its end marks the end of those before it."""
