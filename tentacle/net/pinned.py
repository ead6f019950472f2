"""Blocking HTTPS connections, pinned, for worker threads: the bulk path of packages.

A package body is the hot path (a 1 GiB file must move at least as fast as curl moves
it), so both directions use a blocking TLS socket in a thread rather than the event
loop: the tentacle's pull from mirrors and the server's feed
(tentacle.packages.mirror_client), and the server's push to listening tentacles
(server_shim.dispatch.pusher). This module is what they share:

- `PinnedConnection`: connect (TLS included) within ``connect_timeout``, refuse a peer
  whose certificate thumbprint is not pinned (when pins are given) before a byte of the
  request is sent, then let every read or write wait at most ``io_timeout``; `abort`
  from any thread makes a blocked read or write return at once.
- `describe`: the operator's reason for a failure, told apart by whether the connection
  was made ("stalled: no bytes for 10 s" against "no connection within 3 s").
- `in_thread`: run blocking work in a thread of its own, awaited; cancelling the awaiting
  task aborts the work and waits for the thread to finish with its files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Callable, Collection
from typing import TypeVar
from urllib.parse import urlsplit

from tentacle.errors import TrustError
from tentacle.net import failures
from tentacle.net.tls import socket_thumbprint

T = TypeVar("T")


class PinnedConnection:
    """One blocking HTTPS/1.1 connection to the host of a URL; for one worker thread."""

    def __init__(
        self,
        url: str,
        ctx: ssl.SSLContext,
        *,
        connect_timeout: float,
        io_timeout: float,
        pins: Collection[str] | None = None,
        blocksize: int = 8192,
    ) -> None:
        """Nothing happens until `open`; ``pins`` None means the CA chain alone decides."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"not an https URL: {url}")
        self.url = url
        self.io_timeout = io_timeout
        self.connect_timeout = connect_timeout
        self.pins = frozenset(p.lower() for p in pins) if pins is not None else None
        self.connected = False
        self.aborted = False
        self.sock: socket.socket | None = None
        self.conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=connect_timeout, context=ctx, blocksize=blocksize
        )

    def open(self) -> http.client.HTTPSConnection:
        """Connect and check the pin; the connection is then ready for requests."""
        self.conn.connect()
        self.sock = self.conn.sock
        if self.aborted:
            raise ConnectionAbortedError("aborted")
        if self.pins is not None:
            presented = socket_thumbprint(self.sock) or "none"
            if presented not in self.pins:
                expected = ",".join(sorted(self.pins))
                raise TrustError(f"not the pinned server: expected {expected}, presented {presented}")
        self.connected = True
        if self.sock is not None:
            self.sock.settimeout(self.io_timeout)
        return self.conn

    def describe(self, exc: BaseException) -> str:
        """A short reason for this connection's failure."""
        if isinstance(exc, TrustError):
            return exc.message
        if isinstance(exc, TimeoutError):
            if self.connected:
                return f"stalled: no bytes for {self.io_timeout:g} s"
            return f"no connection within {self.connect_timeout:g} s"
        if not self.connected and not isinstance(exc, ConnectionRefusedError | ssl.SSLError):
            return f"cannot connect: {getattr(exc, 'strerror', None) or exc}"
        return failures.reason(exc)

    def abort(self) -> None:
        """Stop from any thread: a read or write blocked in another thread returns at once."""
        self.aborted = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown: SSLSocket's own would drop its SSL object
                # under the thread that is reading.
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


async def in_thread(work: Callable[[], T], cancel: Callable[[], None], name: str = "tentacle-io") -> T:
    """Run blocking `work` in a thread of its own; on cancellation, `cancel` it and wait for it.

    A thread of its own, not the default executor: a transfer holds it for minutes, and
    a few parallel transfers must not starve everything else that uses the executor.
    """
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            done.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    future = asyncio.wrap_future(done)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel()
        await asyncio.wait([future])  # the thread has closed its files before we go on
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller gets
        raise
