"""Who is there: the live links to tentacles and whether each is online.

A polling tentacle is online while its websocket is open (heartbeats close a
half-open one). A listening tentacle is online while the periodic ping succeeds:
`check_loop` pings every listening machine each `interval` seconds, concurrently.
``lastSeen`` is kept in memory on every contact and written to the database in one
batch per interval. Machine names are unique within a space only, so everything here is
keyed by (space, name). Machine records are cached (`machine`): every call to a target
needs one, and `forget` (removal, re-registration) drops it. Calls of the signed methods
are signed on their way out by the `signer` (`server_shim.dispatch.signer`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

from server_shim.dispatch.links import Link, ListeningLink, PollingLink
from server_shim.dispatch.presence import Presence
from server_shim.dispatch.signer import Signer
from server_shim.store import machine_rows as machines
from server_shim.store.database import Database
from server_shim.store.machine_rows import Machine
from server_shim.store.spaces import DEFAULT_SPACE
from tentacle.common.logs import event
from tentacle.errors import TentacleError, TransportError
from tentacle.protocol.rpc_messages import PING, SIGNED_METHODS, Call, NoParams
from tentacle.protocol.wire import Wire

log = logging.getLogger("server_shim.dispatch.fleet")
P = TypeVar("P", bound=Wire)
R = TypeVar("R", bound=Wire)
Key = tuple[str, str]  # (space, machine name)


class Fleet:
    """The live state of every machine, next to the database's records."""

    def __init__(
        self, db: Database, client_ctx: ssl.SSLContext, interval: float = 5.0, timeout: float = 5.0
    ) -> None:
        self.db = db
        self.client_ctx = client_ctx
        self.interval, self.timeout = interval, timeout
        self.polling: dict[Key, PollingLink] = {}
        self.listening: dict[Key, ListeningLink] = {}
        self.online_listening: set[Key] = set()
        self.seen: dict[Key, float] = {}
        self._unsaved: dict[Key, float] = {}
        self._machines: dict[Key, Machine] = {}
        self._forgotten = 0  # bumped by `forget`: a lookup that raced with it is not cached
        self.closing = False
        self.on_forget: list[Callable[[str, str], None]] = []  # told (space, name) of each machine dropped
        self.signer: Signer | None = None  # set by the server: None sends everything unsigned
        self.presence = Presence(db)  # this node's links in the database, and machineOnline/Offline

    @property
    def node(self) -> str:
        """This node's name: whose links the database's presence rows record."""
        return self.presence.node

    @node.setter
    def node(self, name: str) -> None:
        self.presence.node = name

    async def mark(self, key: Key, up: bool, reason: str | None = None, *, announce: bool = True) -> None:
        """Record in the database that this node holds (or lost) a link to the machine, so that
        every node's machines list shows it, with the machine's online or offline event when
        it is the first link up or the last one down (`server_shim.dispatch.presence`)."""
        await self.presence.mark(key[0], key[1], up, reason, announce=announce)

    async def machine(self, name: str, space: str = DEFAULT_SPACE) -> Machine | None:
        """The registered machine `name` of `space`, or None; cached."""
        key = (space, name)
        found = self._machines.get(key)
        if found is None:
            generation = self._forgotten
            found = await self.db.run(machines.find, space, name)
            if found is not None and generation == self._forgotten:
                self._machines[key] = found
        return found

    def is_online(self, name: str, space: str = DEFAULT_SPACE) -> bool:
        """Whether the machine `name` of `space` can be reached now."""
        key = (space, name)
        return key in self.polling or key in self.online_listening

    def touch(self, key: Key) -> None:
        """Note a contact with the machine (space, name)."""
        self.seen[key] = self._unsaved[key] = time.time()

    def attach(self, machine: Machine, link: PollingLink) -> PollingLink | None:
        """A polling tentacle connected; returns the link it replaces, if any."""
        old = self.polling.get(machine.key)
        self.polling[machine.key] = link
        self.touch(machine.key)
        event(log, "machine.online", space=machine.space, machine=machine.name, mode="polling")
        return old

    def detach(self, key: Key, link: PollingLink, reason: str) -> bool:
        """A polling tentacle's websocket closed; whether it was the machine's current link."""
        link.fail_all(reason)
        if self.polling.get(key) is not link:
            return False
        del self.polling[key]
        self.touch(key)
        if not self.closing:  # the server stopping is one event (fleet.closed), not thousands
            event(log, "machine.offline", space=key[0], machine=key[1], mode="polling", reason=reason)
        return True

    def link(self, machine: Machine) -> Link:
        """The way to call this machine now (raises TransportError when there is none)."""
        if machine.mode == "polling":
            link = self.polling.get(machine.key)
            if link is None:
                raise TransportError(f"machine {machine.name!r} is not connected")
            return link
        if machine.endpoint is None:
            raise TransportError(f"machine {machine.name!r} has no endpoint")
        existing = self.listening.get(machine.key)
        if existing is None or existing.url != machine.endpoint.rstrip("/") + "/rpc/v1":
            existing = self.listening[machine.key] = ListeningLink(
                machine.endpoint, machine.thumbprint, self.client_ctx, machine.name
            )
        return existing

    async def call(self, machine: Machine, call: Call[P, R], params: P, timeout: float = 30.0) -> R:
        """Send one request to a machine, whichever its mode, signed if its method is; the result struct."""
        link = self.link(machine)
        if self.signer is not None and call.method in SIGNED_METHODS:
            result = await self.signer.call(machine, link, call, params, timeout)
        else:
            result = await link.call(call, params, timeout)
        self.touch(machine.key)
        return result

    async def forget(self, name: str, space: str = DEFAULT_SPACE) -> None:
        """Machine `name` of `space` was removed or replaced: drop its links, tell `on_forget`."""
        for told in self.on_forget:
            told(space, name)
        await self.reconnect(name, space)

    async def reconnect(self, name: str, space: str = DEFAULT_SPACE) -> None:
        """Machine `name` of `space` moved (a new port): drop its links and cached record, so that
        the next call reads where it is now; its tasks go on."""
        key = (space, name)
        self._machines.pop(key, None)
        self._forgotten += 1
        links: list[Link | None] = [self.polling.pop(key, None), self.listening.pop(key, None)]
        for link in links:
            if link is not None:
                await link.close()
        if key in self.online_listening or links[0] is not None:
            self.online_listening.discard(key)
            await self.mark(key, False, announce=False)  # machineRemoved says it

    async def check_once(self) -> None:
        """Ping every listening machine once; save lastSeen."""
        listening = await self.db.run(_listening)
        await asyncio.gather(*(self._check(m) for m in listening))
        if self._unsaved:
            batch, self._unsaved = self._unsaved, {}
            await self.db.run(machines.save_last_seen, batch)

    async def _check(self, machine: Machine) -> None:
        try:
            await self.call(machine, PING, NoParams(), self.timeout)
        except TentacleError as exc:
            if machine.key in self.online_listening:
                self.online_listening.discard(machine.key)
                await self.mark(machine.key, False, exc.message)
                event(
                    log,
                    "machine.offline",
                    logging.WARNING,
                    space=machine.space,
                    machine=machine.name,
                    mode="listening",
                    reason=exc.message,
                )
            return
        if machine.key not in self.online_listening:
            await self.mark(machine.key, True)
            self.online_listening.add(machine.key)
            event(log, "machine.online", space=machine.space, machine=machine.name, mode="listening")

    async def check_loop(self) -> None:
        """Run `check_once` forever, every `interval` seconds."""
        while True:
            try:
                await self.check_once()
            except Exception:
                log.exception("fleet.check_failed")
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Close every link, all at once (one by one, 5,000 close handshakes take minutes)."""
        self.closing = True
        links: list[Link] = [*self.polling.values(), *self.listening.values()]
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        event(log, "fleet.closed", links=len(links))


def _listening(conn: sqlite3.Connection) -> list[Machine]:
    rows = conn.execute("SELECT * FROM machines WHERE mode = 'listening' ORDER BY space, name")
    return [Machine.from_row(row) for row in rows]
