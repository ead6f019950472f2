"""Signs what makes a tentacle act, and hands every tentacle the current signing key.

How it works. Each call of `SIGNED_METHODS` goes through `Signer.seal_for` (from
`Fleet.call`): it makes sure the target has pinned the current key, handing it over
first if not, then signs the request with that key. A hand-over is one ``trust.rotate``
request carrying the current public key, signed by the key the machine pinned before, so
only that key vouches for its successor; the machine's answer is recorded
(`signing_keys.pin`) before anything is signed with the new key.

`rotate` makes a new current key. The courier (`courier_loop`) then hands it to every
online machine in the background; a machine offline at the time gets it before the
first signed call it receives, or at the courier's next pass once it is back. Old keys
stay until no registered machine pins them, then go (`signing_keys.retire_unused`).
A machine that never comes back keeps its old key alive in the home, listed by
``server-shim signing-key status``, until ``machines remove`` takes it off the books.

Several nodes share the keys through the database (`server_shim.store.signing_keys`): each
node reads them again every `REFRESH_EVERY` seconds (`refresh`, from the courier's loop),
before each hand-over, and at once when a tentacle refuses a signature; a refused call is
sent once more after that (`call`), which is safe, as a tentacle acts on nothing it
refuses. So a rotation on one node is used by all of them within seconds, and a request a
node signed with the key it held a moment ago still gets through.

Machines registered before signing existed pinned nothing: they get the current key
with an unsigned ``trust.rotate`` (the tentacle takes a first key on trust, over its
pinned TLS connection). A tentacle too old to know ``trust.rotate`` answers
``unknown-method``: it is sent unsigned requests, as it always was, and asked again
every `RETRY_UNSUPPORTED` seconds (it may have been upgraded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec

from server_shim.dispatch.links import Link, Seal
from server_shim.store import machine_rows, signing_keys
from server_shim.store.database import Database
from server_shim.store.machine_rows import Machine
from server_shim.store.signing_keys import Keyring
from tentacle.common.logs import event
from tentacle.errors import RemoteError, TentacleError, TrustError
from tentacle.protocol import signing
from tentacle.protocol.messages import Request
from tentacle.protocol.rpc_messages import TRUST_ROTATE, Call, RotateParams
from tentacle.protocol.wire import Wire

log = logging.getLogger("server_shim.dispatch.signer")
RETRY_UNSUPPORTED = 600.0
HAND_OVER_TIMEOUT = 30.0
COURIER_BATCH = 64  # hand-overs at once
REFRESH_EVERY = 2.0  # seconds between readings of the keys another node may have changed
FRESH_ENOUGH = 1.0  # a hand-over reads the keys again unless they were read this lately
P = TypeVar("P", bound=Wire)
R = TypeVar("R", bound=Wire)


class Reach(Protocol):
    """What the courier needs of the fleet: who is online, and a link to them."""

    def is_online(self, name: str) -> bool:
        """Whether the machine can be reached now."""

    def link(self, machine: Machine) -> Link:
        """The way to call the machine now."""


class Signer:
    """The keyring, each machine's pinned key, and the hand-overs."""

    def __init__(self, db: Database, keyring: Keyring) -> None:
        self.db, self.keyring = db, keyring
        self.pins: dict[str, str | None] = {}  # thumbprint -> pinned key id (None: none)
        self.unsupported: dict[str, float] = {}  # thumbprint -> when to ask an old tentacle again
        self._locks: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._settled = False
        self._keys_lock = asyncio.Lock()  # a reading of the keys and a rotation never interleave
        self._read_at = time.monotonic()

    @classmethod
    def open(cls, db: Database, config_dir: Path, state_dir: Path) -> Signer:
        """The signer of a home (its first key made when it has none)."""
        return cls(db, db.sync(Keyring.open, config_dir, state_dir))

    async def call(self, machine: Machine, link: Link, call: Call[P, R], params: P, timeout: float) -> R:
        """Send a signed call; refused for its signature, once more after reading the keys again."""
        try:
            return await link.call(call, params, timeout, seal=await self.seal_for(machine, link))
        except RemoteError as exc:
            if exc.remote_code != "BadSignature":
                raise
            event(log, "signing.refused", logging.WARNING, machine=machine.name, reason=exc.message)
        self.pins.pop(machine.thumbprint, None)  # another node may have handed it a key since
        await self.refresh()
        return await link.call(call, params, timeout, seal=await self.seal_for(machine, link))

    async def refresh(self, fresh_enough: float = 0.0) -> bool:
        """Read the keys again (unless read within ``fresh_enough`` s); whether they changed."""
        async with self._keys_lock:
            if time.monotonic() - self._read_at < fresh_enough:
                return False
            found = await self.db.run(self.keyring.read)
            self._read_at = time.monotonic()
            before = (self.keyring.current, set(self.keyring.keys))
            dropped = self.keyring.take(found)
            if dropped:  # file deletes wait on the disk: not on the event loop
                await asyncio.to_thread(self.keyring.remove_files, dropped)
        if before == (self.keyring.current, set(self.keyring.keys)):
            return False
        self.pins.clear()  # re-read from the database: other nodes' hand-overs changed them
        self._settled = False
        self._wake.set()
        event(
            log,
            "signing.keys_read",
            key=self.keyring.current,
            previous=before[0],
            retired=",".join(dropped) or "none",
        )
        return True

    async def seal_for(self, machine: Machine, link: Link) -> Seal | None:
        """How to sign requests to ``machine`` (after a hand-over if needed); None: unsigned."""
        return self._by(machine, await self.ensure(machine, link))

    async def ensure(self, machine: Machine, link: Link) -> str | None:
        """The key ``machine`` has pinned, made the current one first; None for an old tentacle."""
        current = self.keyring.current
        if await self._pinned(machine) == current:
            return current
        if time.monotonic() < self.unsupported.get(machine.thumbprint, 0.0):
            return None
        async with self._locks.setdefault(machine.thumbprint, asyncio.Lock()):
            # Hand over the newest key, whichever node made it; a pinned key not held here is one
            # another node made and handed over since this node last read the keys.
            held = (await self._pinned(machine)) in (None, *self.keyring.keys)
            await self.refresh(FRESH_ENOUGH if held else 0.0)
            current = self.keyring.current
            pinned = await self._pinned(machine)
            if pinned == current:
                return current
            return await self._hand_over(machine, link, pinned, current)

    async def _pinned(self, machine: Machine) -> str | None:
        if machine.thumbprint not in self.pins:
            self.pins[machine.thumbprint] = await self.db.run(signing_keys.pinned, machine.thumbprint)
        return self.pins[machine.thumbprint]

    async def _hand_over(self, machine: Machine, link: Link, pinned: str | None, current: str) -> str | None:
        params = RotateParams(key_id=current, public_key=self.keyring.public(current))
        try:
            await link.call(TRUST_ROTATE, params, HAND_OVER_TIMEOUT, seal=self._by(machine, pinned))
        except RemoteError as exc:
            if exc.remote_code == "unknown-method":
                self.unsupported[machine.thumbprint] = time.monotonic() + RETRY_UNSUPPORTED
                event(log, "signing.unsupported", logging.WARNING, machine=machine.name, reason=exc.message)
                return None
            if exc.remote_code != "BadSignature":
                raise
            # It may hold the current key already (the answer to an earlier hand-over was lost,
            # this database lost its row, or another node handed it a key made since): then the
            # hand-over signed by the newest key is a repeat.
            await self.refresh()
            current = self.keyring.current
            params = RotateParams(key_id=current, public_key=self.keyring.public(current))
            await link.call(TRUST_ROTATE, params, HAND_OVER_TIMEOUT, seal=self._by(machine, current))
        await self.db.run(signing_keys.pin, machine.thumbprint, current)
        self.pins[machine.thumbprint] = current
        self.unsupported.pop(machine.thumbprint, None)
        event(log, "signing.key_handed_over", machine=machine.name, key=current, previous=pinned or "none")
        return current

    def _by(self, machine: Machine, key_id: str | None) -> Seal | None:
        """Signing by ``key_id`` (held), or none for a machine that pinned nothing."""
        if key_id is None:
            return None
        key = self.keyring.keys.get(key_id)
        if key is None:
            raise TrustError(
                f"machine {machine.name!r} pinned signing key {key_id}, which this server no longer holds:"
                f" register it again (`server-shim machines replace {machine.name}`)"
            )
        name = machine.name

        def seal(request: Request) -> Request:
            signature = signing.sign(request.method.value, name, request.params, key, time.time(), key_id)
            return msgspec.structs.replace(request, signature=signature)

        return seal

    async def rotate(self) -> tuple[str, str]:
        """Make a new current key and wake the courier; (new key id, previous key id)."""
        async with self._keys_lock:
            previous = self.keyring.current
            current, key = await self.db.run(self.keyring.create)
            self.keyring.keys, self.keyring.current = {**self.keyring.keys, current: key}, current
        event(log, "signing.key_rotated", key=current, previous=previous)
        self._settled = False
        self._wake.set()
        return current, previous

    def registered(self, thumbprint: str, key_id: str) -> None:
        """A machine just registered, pinning ``key_id`` (recorded by the route)."""
        self.pins[thumbprint] = key_id
        if key_id != self.keyring.current:  # a rotation came in between: hand it the new one
            self._settled = False
            self._wake.set()

    async def courier_loop(self, fleet: Reach, interval: float) -> None:
        """Read the keys every `REFRESH_EVERY` s; hand the current key to every online machine
        that lacks it every ``interval`` s, and at once after a rotation here or elsewhere."""
        due = 0.0
        while True:
            try:
                await self.refresh()
                if self._wake.is_set() or time.monotonic() >= due:
                    self._wake.clear()
                    due = time.monotonic() + interval
                    await self.courier_pass(fleet)
            except Exception:
                log.exception("signing.courier_failed")
                self._wake.clear()  # a failing database is tried at the next tick, not in a spin
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(interval, REFRESH_EVERY))

    async def courier_pass(self, fleet: Reach) -> int:
        """One pass: hand over to the online machines that need it; retire unused keys. How many left."""
        if self._settled:
            return 0
        pending = await self.db.run(signing_keys.pending, self.keyring.current)
        machines = await self.db.run(_machines, [p.thumbprint for p in pending])
        reachable = [m for m in machines if fleet.is_online(m.name)]
        for start in range(0, len(reachable), COURIER_BATCH):
            batch = reachable[start : start + COURIER_BATCH]
            await asyncio.gather(*(self._try_hand_over(fleet, m) for m in batch))
        retired = await self.db.run(signing_keys.retire_unused)
        if retired:
            self.keyring.forget(retired)
            await asyncio.to_thread(self.keyring.remove_files, retired)
            event(log, "signing.keys_retired", keys=",".join(retired))
        left = len(await self.db.run(signing_keys.pending, self.keyring.current))
        self._settled = left == 0
        return left

    async def _try_hand_over(self, fleet: Reach, machine: Machine) -> None:
        try:
            await self.ensure(machine, fleet.link(machine))
        except TentacleError as exc:
            event(log, "signing.hand_over_failed", logging.WARNING, machine=machine.name, reason=exc.message)


def _machines(conn: sqlite3.Connection, thumbprints: list[str]) -> list[Machine]:
    found = (machine_rows.by_thumbprint(conn, thumbprint) for thumbprint in thumbprints)
    return [machine for machine in found if machine is not None]
