"""The server's plan-signing keys (Ed25519), apart from its TLS key, and who pinned which.

Private keys are files in the home, ``signing/<key id>.key`` (PKCS#8 PEM, 0600, in a 0700
folder) of the config folder, or of the state folder when the config folder is read-only
(a rotation under systemd's hardened unit); the database holds their public halves, which
one is current, and for each machine certificate (by thumbprint) the key it has pinned::

    signing_keys (key_id, public_key, created_at, current)   one row current at a time
    machine_keys (thumbprint, key_id, pinned_at)              no row: pinned nothing yet

`init` makes the first key, as does the first start of a home made before keys existed
(`Keyring.open`). `rotate` makes a new current key; the old ones stay, to sign each
machine's hand-over (``trust.rotate``), until no registered machine pins them
(`retire_unused`): then their rows and files go.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tentacle.common.atomicfile import write_private
from tentacle.errors import ConfigError
from tentacle.protocol import signing

KEY_DIR = "signing"


@dataclass
class Keyring:
    """The private keys this server holds, by key id, and which one is current.

    ``folders`` are where key files are looked for and written, in order of preference.
    """

    folders: tuple[Path, ...]
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    current: str = ""

    @classmethod
    def open(cls, conn: sqlite3.Connection, config_dir: Path, state_dir: Path | None = None) -> Keyring:
        """Load every key the database lists (making the first one when there is none)."""
        ring = cls(tuple(folder / KEY_DIR for folder in (config_dir, state_dir) if folder is not None))
        rows = conn.execute("SELECT key_id, current FROM signing_keys ORDER BY created_at").fetchall()
        if not rows:
            ring.add(conn)
            return ring
        for row in rows:
            ring.keys[row["key_id"]] = ring._load(row["key_id"])
            if row["current"]:
                ring.current = row["key_id"]
        if not ring.current:
            raise ConfigError("signing_keys: no current signing key in the database")
        return ring

    def _load(self, key_id: str) -> Ed25519PrivateKey:
        found = [folder / f"{key_id}.key" for folder in self.folders if (folder / f"{key_id}.key").exists()]
        path = found[0] if found else self.folders[0] / f"{key_id}.key"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read signing key {key_id}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: not an Ed25519 key")
        return key

    def add(self, conn: sqlite3.Connection) -> str:
        """A new key, written 0600 and recorded as current (in ``conn``'s transaction); its id."""
        key = Ed25519PrivateKey.generate()
        public = signing.public_text(key.public_key())
        key_id = signing.key_id(public)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._write(f"{key_id}.key", pem)
        conn.execute("UPDATE signing_keys SET current = 0")
        conn.execute(
            "INSERT INTO signing_keys (key_id, public_key, created_at, current) VALUES (?, ?, ?, 1)",
            (key_id, public, time.time()),
        )
        self.keys[key_id], self.current = key, key_id
        return key_id

    def _write(self, name: str, pem: bytes) -> None:
        """Into the first folder that takes it (a read-only config folder passes to the next)."""
        for number, folder in enumerate(self.folders):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_private(folder / name, pem, 0o600)
                return
            except OSError:
                if number == len(self.folders) - 1:
                    raise

    def public(self, key_id: str) -> str:
        """``ed25519:<base64>`` of a key held."""
        return signing.public_text(self.keys[key_id].public_key())

    def forget(self, key_ids: list[str]) -> None:
        """Drop retired keys, their files included."""
        for key_id in key_ids:
            self.keys.pop(key_id, None)
            for folder in self.folders:
                (folder / f"{key_id}.key").unlink(missing_ok=True)


def pin(conn: sqlite3.Connection, thumbprint: str, key_id: str) -> None:
    """Record that the machine with this certificate pinned ``key_id``."""
    conn.execute(
        "INSERT INTO machine_keys (thumbprint, key_id, pinned_at) VALUES (?, ?, ?)"
        " ON CONFLICT (thumbprint) DO UPDATE SET key_id = excluded.key_id, pinned_at = excluded.pinned_at",
        (thumbprint, key_id, time.time()),
    )


def pinned(conn: sqlite3.Connection, thumbprint: str) -> str | None:
    """The key the machine with this certificate pinned, or None."""
    row = conn.execute("SELECT key_id FROM machine_keys WHERE thumbprint = ?", (thumbprint,)).fetchone()
    return None if row is None else str(row["key_id"])


@dataclass(frozen=True)
class Pending:
    """A registered machine that has not pinned the current key yet."""

    space: str
    name: str
    thumbprint: str
    key_id: str | None


def pending(conn: sqlite3.Connection, current: str) -> list[Pending]:
    """Every registered machine whose pinned key is not ``current`` (or that pinned none)."""
    rows = conn.execute(
        "SELECT m.space, m.name, m.thumbprint, k.key_id FROM machines m"
        " LEFT JOIN machine_keys k ON k.thumbprint = m.thumbprint"
        " WHERE k.key_id IS NULL OR k.key_id <> ? ORDER BY m.space, m.name",
        (current,),
    )
    return [Pending(r["space"], r["name"], r["thumbprint"], r["key_id"]) for r in rows]


def retire_unused(conn: sqlite3.Connection) -> list[str]:
    """Delete the rows of old keys no registered machine pins; their ids (the caller drops the files)."""
    rows = conn.execute(
        "SELECT key_id FROM signing_keys WHERE current = 0 AND key_id NOT IN"
        " (SELECT k.key_id FROM machine_keys k JOIN machines m ON m.thumbprint = k.thumbprint)"
    ).fetchall()
    retired = [str(row["key_id"]) for row in rows]
    for key_id in retired:
        conn.execute("DELETE FROM signing_keys WHERE key_id = ?", (key_id,))
    return retired


def usage(conn: sqlite3.Connection) -> list[tuple[str, bool, int]]:
    """(key id, current, machines pinning it) of every key held, oldest first."""
    rows = conn.execute(
        "SELECT s.key_id, s.current, COUNT(m.name) AS machines FROM signing_keys s"
        " LEFT JOIN machine_keys k ON k.key_id = s.key_id"
        " LEFT JOIN machines m ON m.thumbprint = k.thumbprint"
        " GROUP BY s.key_id, s.current, s.created_at ORDER BY s.created_at"
    )
    return [(str(r["key_id"]), bool(r["current"]), int(r["machines"])) for r in rows]
