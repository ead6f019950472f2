"""The tentacle's side of signed requests: check before acting, and take a rotated key.

`SignatureCheck.check` runs in the service layer (`tentacle.agent.rpc.Service`) on every
request before any handler sees it; requests of `SIGNED_METHODS` must carry a valid
signature by the pinned key (`tentacle.protocol.signing.verify`), or are refused with
``bad-signature`` and a ``trust.bad_signature`` log line. The task runner never sees them.

``trust.rotate`` (`SignatureCheck.rotate`) pins the server's next key; the request itself
is checked first like any other, so only the pinned key can hand over to its successor.
The new key is written before the answer goes back, to ``<state>/signing-key.json``
(`PinFile`): the config folder is read-only to the service under systemd. The file names
the key registration pinned in ``tentacle.toml`` that it replaces, so registering again
(a new key there) outranks a rotation of the old registration.

A tentacle registered before signing existed has no pinned key. It keeps working: it
accepts unsigned requests, logging ``trust.unsigned_accepted`` once, and pins the first
key the server hands it with ``trust.rotate`` (trust on first use, over the mutually
authenticated, pinned TLS connection, as registration itself is). From then on it
refuses unsigned requests like any other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from tentacle.common.atomicfile import write_private
from tentacle.common.logs import event
from tentacle.errors import ConfigError
from tentacle.protocol import signing
from tentacle.protocol.messages import Request
from tentacle.protocol.rpc_messages import SIGNED_METHODS, RotateParams, RotateResult
from tentacle.protocol.signing import BadSignature

log = logging.getLogger("tentacle.agent.signatures")
PinKey = Callable[[str], None]  # persists a newly pinned key ("ed25519:...") before it is used
PIN_FILE = "signing-key.json"


class PinFile:
    """The signing key a rotation pinned, in the state folder, over the one registration pinned."""

    def __init__(self, state_dir: Path, registered: str) -> None:
        self.path = state_dir / PIN_FILE
        self.registered = registered  # tentacle.toml's server.signing_key ("" when none)

    def pinned(self) -> str:
        """The key in force: the rotated one if it rotated this registration's key, else registration's."""
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            return self.registered
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: unreadable ({exc}); remove it and register again") from exc
        if not isinstance(saved, dict) or saved.get("registered") != self.registered:
            return self.registered  # made for an earlier registration
        key = saved.get("key")
        try:
            signing.public_raw(str(key))
        except ValueError as exc:
            raise ConfigError(f"{self.path}: key: {exc}") from exc
        return str(key)

    def save(self, key: str) -> None:
        """Pin ``key`` from now on (written atomically)."""
        body = json.dumps({"registered": self.registered, "key": key, "pinnedAt": time.time()})
        write_private(self.path, body.encode(), 0o644)


class SignatureCheck:
    """Checks the signed requests for machine ``machine`` against the pinned key."""

    def __init__(
        self, machine: str, pinned: str, save: PinKey, clock: Callable[[], float] = time.time
    ) -> None:
        """``pinned`` is ``ed25519:<base64>``, or "" for a tentacle that has not learnt a key yet."""
        self.machine = machine
        self.pinned: str | None = pinned or None
        if self.pinned is not None:
            signing.public_raw(self.pinned)  # ValueError for a malformed one, before any request
        self._save, self._clock = save, clock
        self._warned = False

    @property
    def key_id(self) -> str | None:
        """The pinned key's id, or None."""
        return signing.key_id(self.pinned) if self.pinned is not None else None

    def check(self, request: Request) -> None:
        """Raise `BadSignature` (and log it) unless the request may be acted on."""
        if request.method not in SIGNED_METHODS:
            return
        if self.pinned is None:
            self._accept_unsigned(request)
            return
        try:
            signing.verify(
                request.method.value,
                self.machine,
                request.params,
                request.signature,
                self.pinned,
                self._clock(),
            )
        except BadSignature as exc:
            event(
                log,
                "trust.bad_signature",
                logging.WARNING,
                method=request.method.value,
                request=request.id,
                reason=exc.message,
            )
            raise

    def _accept_unsigned(self, request: Request) -> None:
        if not self._warned:
            self._warned = True
            event(
                log,
                "trust.unsigned_accepted",
                logging.WARNING,
                method=request.method.value,
                reason="no signing key pinned yet (registered before signed plans); the server sends one",
            )

    async def rotate(self, params: RotateParams) -> RotateResult:
        """Pin the key the (already checked) request hands over; a repeat of the pinned key is a no-op."""
        if signing.key_id(params.public_key) != params.key_id:
            raise BadSignature(f"trust.rotate: key id {params.key_id} does not name the key it carries")
        if self.key_id != params.key_id:
            await asyncio.to_thread(self._save, params.public_key)
            old = self.key_id
            self.pinned = params.public_key
            event(log, "trust.key_pinned", key=params.key_id, previous=old or "none")
        return RotateResult(key_id=params.key_id)
