"""Sensitive values at rest: sealed with AES-256-GCM under a key kept in the server's home.

Every sensitive variable value the database holds (a project's document, a release's
frozen process, a task's plans) is stored as ``sealed:v1:<key id>:<base64 nonce+ciphertext>``
and opened only when it is used: to resolve a plan, or to send one to its tentacle. So a
copied database file (or a backup of it) reveals no secret without ``encryption.key``,
which lives in the instance's config folder, mode 0600, made by `init` (or by the first
start of a home made before, which then seals what its database held in clear and
rewrites the file so that no old page keeps a clear copy: `seal_legacy`). Under systemd's
hardened unit the config folder is read-only to the service: a key made at its first start
then goes to the state folder, with a warning to move it beside the others.

The database connection carries the sealer (`Database(path, sealer)`), so the store's
functions keep their shape: they call `seal` and `unseal` on the JSON they write and read.
A value that was never sealed (a row older than this) reads as it is. Tampering, or a
database used with another home's key, is a `StorageError` naming both key ids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tentacle.common.atomicfile import write_private
from tentacle.common.logs import event
from tentacle.errors import ConfigError, StorageError

log = logging.getLogger("server_shim.store.sealing")
KEY_FILE = "encryption.key"
PREFIX = "sealed:v1:"
_AAD = b"tentacle server sealed value v1"
_NONCE = 12


class Sealer:
    """Seals and opens text with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("an encryption key is 32 bytes")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"key id\0" + key).hexdigest()[:16]

    def seal(self, text: str) -> str:
        """``text`` sealed (a fresh nonce each time, so equal values do not look equal)."""
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(nonce, text.encode(), _AAD)
        return f"{PREFIX}{self.key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, text: str) -> str:
        """The text `seal` was given; StorageError for another key's value or a damaged one."""
        key_id, _, body = text.removeprefix(PREFIX).partition(":")
        if key_id != self.key_id:
            raise StorageError(
                f"a sensitive value was sealed with key {key_id}, and this server's {KEY_FILE} is key"
                f" {self.key_id}: the database belongs with another home's key"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD).decode()
        except (binascii.Error, InvalidTag, UnicodeDecodeError, ValueError) as exc:
            raise StorageError(f"a sealed sensitive value is damaged (key {key_id})") from exc


def is_sealed(value: str) -> bool:
    """Whether a stored value is sealed."""
    return value.startswith(PREFIX)


def key_path(config_dir: Path, state_dir: Path | None = None) -> Path | None:
    """Where a home keeps its encryption key: its config folder, else its state folder; None: nowhere."""
    for folder in (config_dir, state_dir):
        if folder is not None and (folder / KEY_FILE).exists():
            return folder / KEY_FILE
    return None


def create_key(config_dir: Path, state_dir: Path | None = None) -> Path:
    """Make the home's key (0600) unless it has one; its path.

    In the config folder, or in the state folder when the config folder is read-only (the
    service under systemd's hardened unit), which is logged: the key should sit apart from
    the database, so that a backup of the state folder does not carry both.
    """
    found = key_path(config_dir, state_dir)
    if found is not None:
        return found
    key = base64.b64encode(os.urandom(32)) + b"\n"
    try:
        write_private(config_dir / KEY_FILE, key, 0o600)
        return config_dir / KEY_FILE
    except OSError as exc:
        if state_dir is None:
            raise
        write_private(state_dir / KEY_FILE, key, 0o600)
        event(
            log,
            "values.key_in_state",
            logging.WARNING,
            path=state_dir / KEY_FILE,
            reason=f"{config_dir} is not writable ({exc.strerror}); move the key there, beside ca.key",
        )
        return state_dir / KEY_FILE


def load(config_dir: Path, state_dir: Path | None = None) -> Sealer | None:
    """The home's sealer, or None when it has no key yet; ConfigError for an unusable key file."""
    path = key_path(config_dir, state_dir)
    if path is None:
        return None
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Sealer(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{path}: not a base64 32-byte key ({exc})") from exc


def of(conn: sqlite3.Connection) -> Sealer | None:
    """The sealer the connection carries (`server_shim.store.database.connect`)."""
    sealer: Sealer | None = getattr(conn, "sealer", None)
    return sealer


def seal(conn: sqlite3.Connection, document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a JSON document (a process or a plan) with its sensitive values sealed."""
    return _with_values(document, lambda value: value if is_sealed(value) else _sealer(conn).seal(value))


def unseal(conn: sqlite3.Connection, document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored JSON document with its sensitive values opened."""
    return opened(of(conn), document)


def seal_value(conn: sqlite3.Connection, text: str) -> str:
    """One sensitive value (a reaction's secret) sealed; one already sealed stays as it is."""
    return text if is_sealed(text) else _sealer(conn).seal(text)


def open_value(conn: sqlite3.Connection, text: str) -> str:
    """One stored value opened (a clear one from before sealing is given as it is)."""
    return _sealer(conn).open(text) if is_sealed(text) else text


def opened(sealer: Sealer | None, document: dict[str, Any]) -> dict[str, Any]:
    """`unseal` with the sealer given (for callers that cache by it)."""
    return _with_values(document, lambda value: _needed(sealer).open(value) if is_sealed(value) else value)


def _sealer(conn: sqlite3.Connection) -> Sealer:
    return _needed(of(conn))


def _needed(sealer: Sealer | None) -> Sealer:
    if sealer is None:
        raise StorageError(
            f"sensitive values need the home's {KEY_FILE}; this database was opened without it"
        )
    return sealer


def _with_values(document: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """``document`` with ``change`` applied to the value of each sensitive variable."""
    variables = document.get("variables")
    if not isinstance(variables, list):
        return document
    changed = [_changed(v, change) for v in variables]
    if all(new is old for new, old in zip(changed, variables, strict=True)):
        return document  # the same object: callers can tell that nothing changed
    return {**document, "variables": changed}


def _changed(variable: object, change: Callable[[str], str]) -> object:
    if not _sensitive(variable):
        return variable
    assert isinstance(variable, dict), "checked by _sensitive"
    value = change(variable["value"])
    return variable if value == variable["value"] else {**variable, "value": value}


def _sensitive(variable: object) -> bool:
    return (
        isinstance(variable, dict)
        and variable.get("sensitive") is True
        and isinstance(variable.get("value"), str)
    )


# --- a home made before sealing: seal what it holds in clear, once -----------------------------

_DONE = "sensitive_values_sealed"


def seal_legacy(conn: sqlite3.Connection) -> int:
    """Seal every clear sensitive value in projects, releases and tasks, once; how many rows changed."""
    if conn.execute("SELECT 1 FROM server_settings WHERE name = ?", (_DONE,)).fetchone() is not None:
        return 0
    changed = _seal_rows(conn)
    conn.execute("INSERT INTO server_settings (name, value) VALUES (?, '1')", (_DONE,))
    return changed


def _seal_rows(conn: sqlite3.Connection) -> int:
    changed = 0
    for row in conn.execute("SELECT space, name, document FROM projects").fetchall():
        if (text := _sealed_text(conn, row["document"])) is not None:
            conn.execute(
                "UPDATE projects SET document = ? WHERE space = ? AND name = ?",
                (text, row["space"], row["name"]),
            )
            changed += 1
    for row in conn.execute("SELECT space, project, version, process FROM releases").fetchall():
        if (text := _sealed_text(conn, row["process"])) is not None:
            keys = (row["space"], row["project"], row["version"])
            conn.execute(
                "UPDATE releases SET process = ? WHERE space = ? AND project = ? AND version = ?",
                (text, *keys),
            )
            changed += 1
    for row in conn.execute("SELECT task_id, plans FROM tasks").fetchall():
        plans = json.loads(row["plans"])
        sealed = {name: seal(conn, plan) for name, plan in plans.items()}
        if any(sealed[name] is not plans[name] for name in plans):
            conn.execute("UPDATE tasks SET plans = ? WHERE task_id = ?", (json.dumps(sealed), row["task_id"]))
            changed += 1
    return changed


def _sealed_text(conn: sqlite3.Connection, text: str) -> str | None:
    """The JSON document ``text`` with its clear sensitive values sealed, or None when it has none."""
    document = json.loads(text)
    sealed = seal(conn, document)
    return None if sealed is document else json.dumps(sealed)
