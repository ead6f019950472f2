"""Fails a test during which the project's own code blocked an event loop for over 100 ms.

How it works: every test loop runs in asyncio's debug mode (``asyncio_debug`` in
pyproject.toml), which times each callback and logs ``Executing <Handle ...> took 0.250
seconds`` past ``slow_callback_duration``. That log line is the verdict. It names the callback
but not the code: a task shows its outermost coroutine (aiohttp's request handler, not our
route) and no line. So a watcher thread looks at each loop's current callback every 20 ms, and
once one has run for 50 ms takes a sample of the loop thread's stack. The callback is the
project's when, from the outermost frame inward, a frame of ``tentacle/`` or ``server_shim/``
comes before any frame of ``tests/``, ``rigs/`` or ``bench/``: a test that calls project code
synchronously (``db.sync``, `Agent(...)` in a fixture) blocks its own loop, which is the test's
business, and is not judged here.

Time inside asyncio's debug mode itself is not counted either: it reads source files
(``linecache``, ``tokenize``) to remember where each task and handle was created, a disk read
that a loaded machine can make last 100 ms whatever code creates the task.

Two kinds of time inside a callback are not its doing, and are not counted: the garbage
collector's (a full collection lands on whatever code allocates) and the time the loop thread
was ready to run but the kernel ran something else (``/proc/thread-self/schedstat``: on two
shared cores a busy machine alone can hold a callback 200 ms).

A callback the watcher never sampled is judged by the CPU time its thread spent meanwhile
(read from schedstat at each look): a long C call holding the GIL in the loop thread (a huge
encode, a hash) runs on the CPU the whole time, while a loop thread that merely waited for the
GIL that another thread held (the database thread, a writer) does not; the watcher, which needs
the GIL too, could not look either, so without this a starved loop would read as a blocked one.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = (str(REPO / "tentacle") + "/", str(REPO / "server_shim") + "/")
TESTS = tuple(str(REPO / name) + "/" for name in ("tests", "rigs", "bench"))
SLOW = 0.1  # seconds: what counts as blocking
DEBUG_MODE_READS = ("/linecache.py", "/tokenize.py")  # asyncio debug mode reading sources
SAMPLE_AFTER = 0.05  # a callback running this long gets its stack sampled
EVERY = 0.02


@dataclass
class Running:
    """The callback a loop runs now, since when, its thread's wait for a CPU by then, its stack."""

    handle: asyncio.Handle
    since: float
    waited: float  # seconds the loop thread had waited for a CPU when this callback was first seen
    frames: traceback.StackSummary | None = None


def _waited(native_id: int | None) -> float:
    """Seconds a thread has spent ready to run but not running (0 where the kernel does not say)."""
    where = "thread-self" if native_id is None else f"self/task/{native_id}"
    try:
        with open(f"/proc/{where}/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _on_cpu(native_id: int | None) -> float:
    """Seconds a thread has spent running on a CPU (0 where the kernel does not say)."""
    where = "thread-self" if native_id is None else f"self/task/{native_id}"
    try:
        with open(f"/proc/{where}/schedstat") as stats:
            return int(stats.read().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _native_id(ident: int) -> int | None:
    return next((t.native_id for t in threading.enumerate() if t.ident == ident), None)


@dataclass
class Blocked:
    """One callback of the project's that held a loop too long."""

    seconds: float
    callback: str
    frames: list[traceback.FrameSummary]  # ours, outermost first
    innermost: traceback.FrameSummary | None  # what it was doing (often a stdlib or C call)

    def __str__(self) -> str:
        where = " <- ".join(_place(f) for f in reversed(self.frames[-4:])) or "?"
        doing = f" (in {_place(self.innermost)})" if self.innermost is not None else ""
        return f"{self.seconds:.3f} s in {where}{doing}; {self.callback}"


def _place(frame: traceback.FrameSummary) -> str:
    return f"{_short(frame.filename)}:{frame.lineno} {frame.name}"


def _short(filename: str) -> str:
    return filename.removeprefix(str(REPO) + "/")


def _owner(frames: traceback.StackSummary | list[traceback.FrameSummary]) -> str | None:
    """'project' or 'tests' by the outermost frame of either; None when neither appears."""
    for frame in frames:
        if frame.filename.startswith(PROJECT):
            return "project"
        if frame.filename.startswith(TESTS):
            return "tests"
    return None


@dataclass
class LoopWatch:
    """Samples the loops' long callbacks; collects the project's blocking ones from asyncio's log."""

    loops: weakref.WeakSet[asyncio.AbstractEventLoop] = field(default_factory=weakref.WeakSet)
    found: list[Blocked] = field(default_factory=list)
    _running: dict[int, Running] = field(default_factory=dict)  # by id(loop)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _collections: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=256)
    )  # (start, end) of the garbage collector's recent runs of a millisecond or more
    _collecting_since: float = 0.0
    # (loop time, the loop thread's CPU seconds) at the watcher's recent looks, by id(loop)
    _cpu_marks: dict[int, collections.deque[tuple[float, float]]] = field(default_factory=dict)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch this loop (asyncio's debug mode times it; `slow_callback_duration` is our limit)."""
        loop.slow_callback_duration = SLOW
        self.loops.add(loop)
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
            self._thread.start()
            gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()  # the clock of the loops' `time()`
        if phase == "start":
            self._collecting_since = now
        elif now - self._collecting_since >= 0.001:
            self._collections.append((self._collecting_since, now))

    def _collecting(self, start: float, end: float) -> float:
        """Seconds the garbage collector ran between `start` and `end`."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in list(self._collections))

    def _watch(self) -> None:
        clock = threading.Event()
        while not clock.wait(EVERY):
            for loop in list(self.loops):
                if loop.is_closed():
                    self.loops.discard(loop)
                else:
                    self._look(loop)

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        """Note the loop's current callback; sample the loop thread's stack once it ran long."""
        handle = getattr(loop, "_current_handle", None)
        thread_id = getattr(loop, "_thread_id", None)
        if thread_id is not None:
            marks = self._cpu_marks.setdefault(id(loop), collections.deque(maxlen=64))
            marks.append((loop.time(), _on_cpu(_native_id(thread_id))))
        with self._lock:
            running = self._running.get(id(loop))
            if handle is None or thread_id is None:
                self._running.pop(id(loop), None)  # asyncio judged it already, if it was slow
                return
            if running is None or running.handle is not handle:
                self._running[id(loop)] = Running(handle, loop.time(), _waited(_native_id(thread_id)))
                return
            if running.frames is not None or loop.time() - running.since < SAMPLE_AFTER:
                return
        frame = sys._current_frames().get(thread_id)
        if frame is None:
            return
        frames = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
        frames.reverse()  # outermost first, as extract_stack gives them
        with self._lock:
            if self._running.get(id(loop)) is running and getattr(loop, "_current_handle", None) is handle:
                running.frames = frames

    def judge(self, loop: asyncio.AbstractEventLoop, text: str, seconds: float) -> None:
        """asyncio said the loop's current callback ran `seconds`: keep it if it was the project's."""
        handle = getattr(loop, "_current_handle", None)
        with self._lock:
            running = self._running.pop(id(loop), None)
        if running is not None and running.handle is not handle:
            running = None  # asyncio's timing is of another callback than the one sampled
        now = loop.time()
        starved = _waited(None) - running.waited if running is not None else 0.0
        if seconds - self._collecting(now - seconds, now) - starved < SLOW:
            return
        frames = running.frames if running is not None else None
        if frames is not None and any(f.filename.endswith(DEBUG_MODE_READS) for f in frames[-8:]):
            return  # sampled inside debug mode's source reading (see the module's docstring)
        if frames is not None:
            if _owner(frames) == "project":
                mine = [f for f in frames if f.filename.startswith(PROJECT)]
                self.found.append(Blocked(seconds, text[:400], mine, frames[-1]))
        elif (
            any(root in text for root in PROJECT)
            and not any(root in text for root in TESTS)
            and self._busy(loop, now - seconds) >= SLOW  # not sampled: on the CPU all along, or starved?
        ):
            self.found.append(Blocked(seconds, text[:400], [], None))

    def _busy(self, loop: asyncio.AbstractEventLoop, since: float) -> float:
        """CPU seconds the loop's thread spent from the watcher's last look before `since` until now."""
        before = [cpu for at, cpu in self._cpu_marks.get(id(loop), ()) if at <= since]
        return _on_cpu(None) - before[-1] if before else 0.0

    def take(self) -> list[Blocked]:
        """What was found since the last call."""
        found, self.found = self.found, []
        return found


class SlowCallbackLog(logging.Handler):
    """Reads asyncio's ``Executing %s took %.3f seconds`` as it is logged, on the loop's thread."""

    def __init__(self, watch: LoopWatch) -> None:
        super().__init__(logging.WARNING)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        """Hand a slow-callback record to the watch, with the handle still current on the loop."""
        if not str(record.msg).startswith("Executing ") or not isinstance(record.args, tuple):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        text, seconds = record.args[0], record.args[1]
        self.watch.judge(loop, str(text), float(seconds) if isinstance(seconds, int | float) else 0.0)
