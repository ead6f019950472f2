"""The server's plan-signing keys (Ed25519), apart from its TLS key, and who pinned which.

Every node of the server signs with the same keys, so they live in the database: each
key's public half, its private half sealed with the server's encryption key
(`server_shim.store.sealing`, shared by every node through ``node secrets``/``node join``),
which one is current, and for each machine certificate (by thumbprint) the key it pinned::

    signing_keys (key_id, public_key, created_at, current, private_key)  one row current at a time
    machine_keys (thumbprint, key_id, pinned_at)                          no row: pinned nothing yet

A copied database (or a backup) so reveals no private key without ``encryption.key``.
The node that makes a key also writes it to its home, ``signing/<key id>.key`` (PKCS#8 PEM,
0600, in a 0700 folder) of the config folder, or of the state folder when the config folder
is read-only (a rotation under systemd's hardened unit). Keys made before the database held
them exist only as such files (``private_key`` NULL): the first start of a node that holds
one stores its sealed copy (`Keyring.store_files`), and the other nodes then read it.

`init` makes the first key, as does the first start of a home made before keys existed
(`Keyring.open`). `rotate` makes a new current key; the old ones stay, to sign each
machine's hand-over (``trust.rotate``), until no registered machine pins them
(`retire_unused`): then their rows and files go. Each node reads the rows again every few
seconds (`Keyring.read`, applied by `Keyring.take`): a rotation or a retirement on one node
reaches the others without a restart.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server_shim.store.sealing import open_value, seal_value
from tentacle.common.atomicfile import write_private
from tentacle.common.logs import event
from tentacle.errors import ConfigError
from tentacle.protocol import signing

log = logging.getLogger("server_shim.store.signing_keys")
KEY_DIR = "signing"


@dataclass(frozen=True)
class KeySet:
    """The keys the database lists, as one node can use them: what `Keyring.read` found."""

    keys: dict[str, Ed25519PrivateKey]  # key id -> private key, for every listed key held
    current: str
    listed: frozenset[str]  # every key id the database lists (held or not)

    @property
    def missing(self) -> list[str]:
        """Listed keys whose private half neither the database nor this node holds."""
        return sorted(self.listed - set(self.keys))


@dataclass
class Keyring:
    """The private keys this server holds, by key id, and which one is current.

    ``folders`` are where key files are looked for and written, in order of preference.
    ``keys`` and ``current`` are replaced together (`take`), never edited in place, so a
    reader always sees one state of the database.
    """

    folders: tuple[Path, ...]
    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)
    current: str = ""

    @classmethod
    def open(cls, conn: sqlite3.Connection, config_dir: Path, state_dir: Path | None = None) -> Keyring:
        """Load every key the database lists (making the first one when there is none)."""
        ring = cls(tuple(folder / KEY_DIR for folder in (config_dir, state_dir) if folder is not None))
        if conn.execute("SELECT 1 FROM signing_keys WHERE current = 1").fetchone() is None:
            if conn.execute("SELECT 1 FROM signing_keys").fetchone() is not None:
                raise ConfigError("signing_keys: no current signing key in the database")
            ring.add(conn)
            return ring
        ring.store_files(conn)
        found = ring.read(conn)
        if found.current not in found.keys:
            raise ConfigError(
                f"signing key {found.current} is current, but neither the database nor"
                f" {ring.folders[0]} holds its private half: start the node that made it once (it stores"
                f" it in the database), or copy its {KEY_DIR}/{found.current}.key here"
            )
        if found.missing:
            event(log, "signing.keys_missing", logging.WARNING, keys=",".join(found.missing))
        ring.take(found)
        return ring

    def store_files(self, conn: sqlite3.Connection) -> int:
        """Store the sealed copy of each listed key the database lacks and this node has a file of."""
        rows = conn.execute("SELECT key_id FROM signing_keys WHERE private_key IS NULL").fetchall()
        stored = 0
        for row in rows:
            path = self._file(row["key_id"])
            if path is None:
                continue
            try:
                pem = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read signing key: {exc.strerror}") from exc
            _key_of(pem, str(path))  # a damaged file is reported here, not stored
            conn.execute(
                "UPDATE signing_keys SET private_key = ? WHERE key_id = ? AND private_key IS NULL",
                (seal_value(conn, pem.decode()), row["key_id"]),
            )
            event(log, "signing.key_stored", key=row["key_id"], source=path)
            stored += 1
        return stored

    def read(self, conn: sqlite3.Connection) -> KeySet:
        """The keys the database lists now (keys already held are not opened again)."""
        rows = conn.execute(
            "SELECT key_id, current, private_key FROM signing_keys ORDER BY created_at"
        ).fetchall()
        held, keys, current = self.keys, {}, ""
        for row in rows:
            key_id = str(row["key_id"])
            key = held.get(key_id)
            if key is None and row["private_key"] is not None:
                key = _key_of(open_value(conn, row["private_key"]).encode(), f"signing_keys row {key_id}")
            if key is not None:
                keys[key_id] = key
            if row["current"]:
                current = key_id
        return KeySet(keys, current, frozenset(str(row["key_id"]) for row in rows))

    def take(self, found: KeySet) -> list[str]:
        """Hold what `read` found (unless its current key is one not held); the keys dropped.

        A key this node held that the database no longer lists was retired by another node:
        it is dropped (the caller removes its file: `remove_files`, off the event loop).
        """
        if found.current not in found.keys:
            return []  # a key made on a node that has not stored it yet: keep signing with ours
        dropped = [key_id for key_id in self.keys if key_id not in found.listed]
        self.keys, self.current = dict(found.keys), found.current
        return dropped

    def create(self, conn: sqlite3.Connection) -> tuple[str, Ed25519PrivateKey]:
        """A new key recorded as current, sealed (in ``conn``'s transaction), and written 0600 here."""
        key = Ed25519PrivateKey.generate()
        public = signing.public_text(key.public_key())
        key_id = signing.key_id(public)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        conn.execute("UPDATE signing_keys SET current = 0")
        conn.execute(
            "INSERT INTO signing_keys (key_id, public_key, created_at, current, private_key)"
            " VALUES (?, ?, ?, 1, ?)",
            (key_id, public, time.time(), seal_value(conn, pem.decode())),
        )
        self._write(f"{key_id}.key", pem)
        return key_id, key

    def add(self, conn: sqlite3.Connection) -> str:
        """`create` a key and make it this keyring's current one; its id."""
        key_id, key = self.create(conn)
        self.keys, self.current = {**self.keys, key_id: key}, key_id
        return key_id

    def _write(self, name: str, pem: bytes) -> None:
        """Into the first folder that takes it; none does: logged (the database holds the key)."""
        errors = []
        for folder in self.folders:
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_private(folder / name, pem, 0o600)
                return
            except OSError as exc:
                errors.append(f"{folder}: {exc.strerror}")
        event(log, "signing.key_file_not_written", logging.WARNING, key=name, reason="; ".join(errors))

    def _file(self, key_id: str) -> Path | None:
        found = [folder / f"{key_id}.key" for folder in self.folders if (folder / f"{key_id}.key").exists()]
        return found[0] if found else None

    def remove_files(self, key_ids: list[str]) -> None:
        """Delete the files of these keys, wherever they are (blocking: call from a thread)."""
        for key_id in key_ids:
            for folder in self.folders:
                (folder / f"{key_id}.key").unlink(missing_ok=True)

    def public(self, key_id: str) -> str:
        """``ed25519:<base64>`` of a key held."""
        return signing.public_text(self.keys[key_id].public_key())

    def forget(self, key_ids: list[str]) -> None:
        """Drop retired keys (the caller removes their files: `remove_files`)."""
        self.keys = {k: v for k, v in self.keys.items() if k not in key_ids}


def _key_of(pem: bytes, where: str) -> Ed25519PrivateKey:
    """The Ed25519 private key of a PEM text; ConfigError naming ``where`` it came from."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot read signing key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{where}: not an Ed25519 key")
    return key


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
