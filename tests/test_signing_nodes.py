"""Plan-signing keys shared through the database, on SQLite and PostgreSQL (``--db-backend``).

A keyring opened from the database alone (no key files: another node's home) holds every
key and signs with the current one; a rotation or a retirement made through one keyring
reaches another that reads the rows again, and a node still signing with the key it read
before another node's rotation is refused once, reads the keys again and is heard (both
transports, real tentacles). A copied database reveals no private key, and
a key made before the database held them gets its sealed copy at the first start of a node
that has its file. (Two real nodes with real tentacles: tests/test_nodes.py.)
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rigs.pgcluster import bin_dir
from server_shim.dispatch.signer import Signer
from server_shim.store import machine_rows, signing_keys
from server_shim.store.database import Database
from server_shim.store.sealing import Sealer
from server_shim.store.signing_keys import KEY_DIR, Keyring
from tentacle.errors import ConfigError, StorageError
from tentacle.protocol import signing
from tentacle.protocol.rpc_messages import TASK_FINISH, UNKNOWN_TASK, StopParams
from tests.conftest import LiveServer, Tentacles, eventually

PARAMS = b'{"taskId":"T-1"}'


@pytest.fixture
def sealer() -> Sealer:
    """The server's encryption key, shared by every node."""
    return Sealer(os.urandom(32))


@pytest.fixture
def db(db_location: Path | str, sealer: Sealer) -> Iterator[Database]:
    """The server's database, opened as a node opens it (with the encryption key)."""
    database = Database(db_location, sealer)
    yield database
    database.close()


def _current_public(db: Database) -> str:
    query = "SELECT public_key FROM signing_keys WHERE current = 1"
    return str(db.sync(lambda conn: conn.execute(query).fetchone())[0])


def _signs_as_current(ring: Keyring, db: Database) -> None:
    """A request signed with the ring's current key verifies against the database's current public key."""
    signature = signing.sign("task.start", "web-01", PARAMS, ring.keys[ring.current], 1000.0, ring.current)
    signing.verify("task.start", "web-01", PARAMS, signature, _current_public(db), 1000.0)


def test_a_keyring_opened_from_the_database_alone_signs_with_the_current_key(
    db: Database, tmp_path: Path
) -> None:
    """Node b's home holds no key file, yet it holds every key node a made and signs with the current."""
    a = db.sync(Keyring.open, tmp_path / "a")
    first = a.current
    second = db.sync(a.add)
    b = db.sync(Keyring.open, tmp_path / "b", tmp_path / "b-state")
    assert b.current == second != first
    assert set(b.keys) == {first, second}
    assert not (tmp_path / "b" / KEY_DIR).exists() and not (tmp_path / "b-state" / KEY_DIR).exists()
    _signs_as_current(b, db)
    assert b.public(first) == a.public(first)


def test_a_rotation_and_a_retirement_reach_a_keyring_that_reads_again(db: Database, tmp_path: Path) -> None:
    """b reads the rows again: a's new key becomes b's current; a retired key leaves b, file and all."""
    a = db.sync(Keyring.open, tmp_path / "a")
    old = a.current
    b_folder = tmp_path / "b" / KEY_DIR
    b_folder.mkdir(parents=True)
    shutil.copy(tmp_path / "a" / KEY_DIR / f"{old}.key", b_folder)  # as `node join` copies it
    b = db.sync(Keyring.open, tmp_path / "b")
    new = db.sync(a.add)
    assert b.current == old
    assert b.take(db.sync(b.read)) == []
    assert b.current == new and set(b.keys) == {old, new}
    _signs_as_current(b, db)
    assert db.sync(signing_keys.retire_unused) == [old]  # no machine pins it
    assert b.take(db.sync(b.read)) == [old]
    b.remove_files([old])  # what the signer does next, off the event loop
    assert set(b.keys) == {new} and not (b_folder / f"{old}.key").exists()


def _secret_forms(key: Ed25519PrivateKey) -> list[bytes]:
    """Every way the private key could sit in a file: PEM, its base64 body, raw, hex, base64 of raw."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    body = b"".join(pem.splitlines()[1:-1])
    return [pem, body, raw, raw.hex().encode(), base64.b64encode(raw)]


def _database_bytes(db: Database, location: Path | str) -> bytes:
    """The database as a copy of it holds it: the SQLite files, or a pg_dump."""
    db.close()
    if isinstance(location, Path):
        files = [location, location.with_name(location.name + "-wal")]
        return b"".join(path.read_bytes() for path in files if path.exists())
    dump = subprocess.run([str(bin_dir() / "pg_dump"), location], capture_output=True, check=True)
    return dump.stdout


def test_a_copied_database_reveals_no_private_key(
    db: Database, db_location: Path | str, tmp_path: Path
) -> None:
    """The private halves are in the database only sealed: no PEM, no raw key in its bytes."""
    a = db.sync(Keyring.open, tmp_path / "a")
    db.sync(a.add)
    stored = db.sync(lambda conn: [r[0] for r in conn.execute("SELECT private_key FROM signing_keys")])
    assert len(stored) == 2 and all(value.startswith("sealed:v1:") for value in stored)
    copied = _database_bytes(db, db_location)
    assert a.current.encode() in copied  # the copy is the real one: it lists the keys
    for key in a.keys.values():
        for form in _secret_forms(key):
            assert form not in copied


def test_a_key_made_before_gets_its_sealed_copy_at_its_nodes_first_start(
    db: Database, tmp_path: Path
) -> None:
    """A file-only key: a node lacking the file cannot start and says why; the node holding it
    stores it at its start, and from then on a node without the file signs with it."""
    made = db.sync(Keyring.open, tmp_path / "a")
    db.sync(lambda conn: conn.execute("UPDATE signing_keys SET private_key = NULL"))
    with pytest.raises(ConfigError, match=f"{made.current} is current.*start the node that made it"):
        db.sync(Keyring.open, tmp_path / "b")
    a = db.sync(Keyring.open, tmp_path / "a")
    assert a.current == made.current
    stored = db.sync(lambda conn: conn.execute("SELECT private_key FROM signing_keys").fetchone()[0])
    assert stored.startswith("sealed:v1:")
    b = db.sync(Keyring.open, tmp_path / "b")
    _signs_as_current(b, db)


def test_a_node_with_another_encryption_key_is_refused_naming_both(
    db: Database, db_location: Path | str, tmp_path: Path
) -> None:
    """A home whose encryption key is not the server's cannot open its signing keys: a clear error."""
    db.sync(Keyring.open, tmp_path / "a")
    stranger = Database(db_location, Sealer(os.urandom(32)))
    with contextlib.closing(stranger), pytest.raises(StorageError, match="another home's key"):
        stranger.sync(Keyring.open, tmp_path / "b")


async def test_a_node_refused_after_another_nodes_rotation_reads_the_keys_and_sends_again(
    live_server: LiveServer, tentacles: Tentacles, mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Node b read the keys before node a rotated and handed the tentacle its new key: b's signed
    call is refused once, b reads the keys again (no file, no restart) and the call goes through."""
    await tentacles.bring_online(mode, {"web-01": ("web",)})
    node_a = live_server.server
    machine = await node_a.db.run(machine_rows.find, "Default", "web-01")
    assert machine is not None
    # Node b: its own home (no key file), the same database; no courier loop, so it reads no more.
    node_b = Signer(node_a.db, await node_a.db.run(Keyring.open, tmp_path / "b", tmp_path / "b-state"))
    link = node_a.fleet.link(machine)
    finish = StopParams(task_id="T-none")
    assert (await node_b.call(machine, link, TASK_FINISH, finish, 10.0)).state == UNKNOWN_TASK
    old = node_b.keyring.current
    status, rotated = await live_server.api("POST", "/api/signing-keys/rotate/v1", {})
    assert status == 201, rotated
    new = rotated["keyId"]

    async def handed_over() -> bool:
        return bool(await node_a.db.run(signing_keys.pinned, machine.thumbprint) == new)

    await eventually(handed_over, 10)
    assert node_b.keyring.current == old != new
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert (await node_b.call(machine, link, TASK_FINISH, finish, 10.0)).state == UNKNOWN_TASK
    assert node_b.keyring.current == new
    assert caplog.text.count("trust.bad_signature") == 1 and "signing.refused" in caplog.text
    assert not (tmp_path / "b" / KEY_DIR).exists() and not (tmp_path / "b-state" / KEY_DIR).exists()
