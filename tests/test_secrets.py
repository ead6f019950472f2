"""Secrets (issue 15, item 7): masked whatever whitespace wraps them, write-only in the API, sealed at rest.

Real processes: `server-shim run` and tentacles in both modes; the database file the
server wrote is then searched byte by byte, as someone who copied it would.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from server_shim.store import sealing
from tentacle.errors import StorageError
from tests.real_fleet import RealFleet

SECRET = "hunter2-7f3e9a-clear"
KEY_LINES = ["-----BEGIN PRIVATE KEY-----", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "-----END PRIVATE KEY-----"]
PEM = "\n".join(KEY_LINES) + "\n"
TRAILING = "trailing-newline-secret-41\n"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _project(name: str = "Vault", value: str = SECRET) -> dict[str, Any]:
    body = "\n".join(
        [
            'printf %s "$Db" | sha256sum',  # the tentacle got the real value: its digest shows
            'echo "db=$Db"',
            'echo "$Pem"',
            'echo "$Trailing"',
            "printf '%s' \"$Trailing\"",
        ]
    )
    return {
        "name": name,
        "steps": [{"name": "Use", "roles": ["web"], "script": {"syntax": "bash", "body": body}}],
        "variables": [
            {"name": "Db", "value": value, "environments": ["Production"], "sensitive": True},
            {"name": "Pem", "value": PEM, "sensitive": True},
            {"name": "Trailing", "value": TRAILING, "sensitive": True},
            {"name": "Plain", "value": "not-secret"},
        ],
    }


def _database_bytes(fleet: RealFleet) -> bytes:
    """Every byte of the database as a copy of its files would hold them (main file, WAL, shm)."""
    state = fleet.server.home / "state"
    return b"".join(path.read_bytes() for path in sorted(state.glob("server.db*")))


def _clear_pieces(value: str = SECRET) -> list[bytes]:
    return [value.encode(), *(line.encode() for line in KEY_LINES[1:2]), TRAILING.strip().encode()]


def _running_web(fleet: RealFleet, mode: str) -> None:
    done = fleet.register("web-01", mode, fleet.server.cli("token", "create"))
    assert done.returncode == 0, done.stderr
    fleet.run_tentacle("web-01")
    fleet.wait_online("web-01")


def test_sealer_round_trip_and_refusals() -> None:
    """A sealed value opens with its key alone; equal values seal differently; tampering is caught."""
    one, other = sealing.Sealer(b"\x01" * 32), sealing.Sealer(b"\x02" * 32)
    first, second = one.seal(SECRET), one.seal(SECRET)
    assert first != second and SECRET not in first and sealing.is_sealed(first)
    assert one.open(first) == SECRET
    with pytest.raises(StorageError, match="another home's key"):
        other.open(first)
    damaged = first[:-6] + ("A" if first[-6] != "A" else "B") + first[-5:]
    with pytest.raises(StorageError, match="damaged"):
        one.open(damaged)


def test_a_copied_database_reveals_no_secret_yet_the_tentacle_gets_it(
    real_fleet: RealFleet, mode: str
) -> None:
    """After apply, release and a deployment, no sensitive value is in the database files; scripts see it."""
    _running_web(real_fleet, mode)
    task_id = real_fleet.deploy(_project())
    ended = real_fleet.wait_task(task_id)
    assert ended["state"] == "success", ended
    log = real_fleet.log_text(task_id)
    assert _digest(SECRET) in log  # the plan the tentacle ran carried the value itself
    key = real_fleet.server.home / "encryption.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    copied = _database_bytes(real_fleet)
    for piece in _clear_pieces():
        assert piece not in copied, piece
        assert piece.decode() not in log
    assert b"not-secret" in copied  # the search does see clear text: plain values are stored as they are


def test_a_tenants_secret_is_sealed_at_rest_and_write_only(real_fleet: RealFleet) -> None:
    """A tenant's sensitive variable is in neither the database files nor GET; a PUT back keeps it."""
    _running_web(real_fleet, "polling")
    assert _put(real_fleet, _project())[0] == 201
    tenant = {
        "projects": {"Vault": ["Dev"]},
        "variables": [
            {"name": "TenantKey", "value": SECRET, "sensitive": True},
            {"name": "Plain", "value": "x"},
        ],
    }
    status, answer = real_fleet.server.api("PUT", "/api/Default/tenants/Acme/v1", tenant)
    assert status in (200, 201), answer
    copied = _database_bytes(real_fleet)
    for piece in _clear_pieces():
        assert piece not in copied, piece
    status, shown = real_fleet.server.api("GET", "/api/Default/tenants/Acme/v1")
    assert status == 200 and SECRET not in json.dumps(shown)
    status, answer = real_fleet.server.api("PUT", "/api/Default/tenants/Acme/v1", shown)
    assert status in (200, 201), answer
    with sqlite3.connect(real_fleet.server.home / "state" / "server.db") as conn:
        stored = conn.execute("SELECT document FROM tenants WHERE name = 'Acme'").fetchone()[0]
    variable = next(v for v in json.loads(stored)["variables"] if v["name"] == "TenantKey")
    assert sealing.is_sealed(variable["value"])  # kept, and still sealed


def test_a_value_ending_in_a_newline_is_masked_everywhere(real_fleet: RealFleet, mode: str) -> None:
    """`echo "$X"` of a value ending in a newline, and each line of a key, never reach a log in clear."""
    _running_web(real_fleet, mode)
    task_id = real_fleet.deploy(_project("Masks"))
    assert real_fleet.wait_task(task_id)["state"] == "success"
    server_log = real_fleet.log_text(task_id)
    on_disk = (real_fleet.home("web-01") / "state" / "tasks" / task_id / "log.jsonl").read_text()
    for text in (server_log, on_disk, real_fleet.log("web-01"), real_fleet.server.log.read_text()):
        assert TRAILING.strip() not in text
        assert all(line not in text for line in KEY_LINES)
        assert SECRET not in text
    assert "db=********" in server_log


def _put(fleet: RealFleet, document: dict[str, Any]) -> tuple[int, Any]:
    return fleet.server.api("PUT", f"/api/Default/projects/{document['name']}/v1", document)


def test_sensitive_values_are_write_only_and_a_put_back_keeps_them(real_fleet: RealFleet) -> None:
    """GET shows `"sensitive": true` and no value; PUT of that document keeps the stored secrets."""
    _running_web(real_fleet, "polling")
    assert _put(real_fleet, _project())[0] == 201
    document = real_fleet.server.call("GET", "/api/Default/projects/Vault/v1")
    shown = {v["name"]: v for v in document["variables"]}
    assert shown["Db"] == {
        "name": "Db",
        "environments": ["Production"],
        "roles": [],
        "machines": [],
        "sensitive": True,
    }
    assert shown["Plain"]["value"] == "not-secret"
    assert SECRET not in json.dumps(document)
    document["steps"][0]["name"] = "Use again"  # an edit that does not touch the secrets
    assert _put(real_fleet, document)[0] == 200
    real_fleet.server.call(
        "POST", "/api/Default/releases/create/v1", {"projectName": "Vault", "releaseVersion": "2.0.0"}
    )
    body = {"projectName": "Vault", "releaseVersion": "2.0.0", "environmentNames": ["Production"]}
    task_id = real_fleet.server.call("POST", "/api/Default/deployments/create/untenanted/v1", body)["taskId"]
    assert real_fleet.wait_task(task_id)["state"] == "success"
    assert _digest(SECRET) in real_fleet.log_text(task_id)


def test_a_secret_is_changed_by_sending_it_and_a_new_slot_needs_its_value(real_fleet: RealFleet) -> None:
    """A sent value replaces the secret; a sensitive variable without value and no stored twin is a 400."""
    assert _put(real_fleet, _project())[0] == 201
    changed = _project(value="rotated-secret-99")
    assert _put(real_fleet, changed)[0] == 200
    document = real_fleet.server.call("GET", "/api/Default/projects/Vault/v1")
    document["variables"][0]["environments"] = ["Staging"]  # another scope: not the stored secret
    status, answer = _put(real_fleet, document)
    assert status == 400
    error = answer["error"]
    assert error["details"]["path"] == "variables[0].value" and "Db" in error["message"]
    document["variables"][0]["value"] = None  # null reads as "keep", like a missing value
    document["variables"][0]["environments"] = ["Production"]
    assert _put(real_fleet, document)[0] == 200


def _legacy_home(fleet: RealFleet) -> None:
    """Make the (stopped) server's home look like one from before sealing: clear values, no key."""
    state = fleet.server.home / "state" / "server.db"
    (fleet.server.home / "encryption.key").unlink()
    doc = _project()
    conn = sqlite3.connect(state)
    with conn:
        conn.execute(
            "INSERT INTO projects (space, name, document, updated_at) VALUES ('Default', 'Vault', ?, ?)",
            (json.dumps({**doc, "runbooks": {}}), time.time()),
        )
        conn.execute(
            "INSERT INTO releases (space, project, version, process, packages, created_at)"
            " VALUES ('Default', 'Vault', '1.0.0', ?, '{}', ?)",
            (json.dumps({**doc, "runbooks": {}}), time.time()),
        )
        # Nor were signing keys sealed then: such a home keeps them as files only.
        conn.execute("UPDATE signing_keys SET private_key = NULL")
    conn.close()
    assert SECRET.encode() in _database_bytes(fleet)


def test_a_home_from_before_sealing_is_sealed_at_its_first_start(tmp_path: Path) -> None:
    """First start: the key is made (0600), clear values sealed, the file rewritten; deploys still work."""
    fleet = RealFleet(tmp_path)
    try:
        _legacy_home(fleet)
        fleet.start_server()
        assert stat.S_IMODE((fleet.server.home / "encryption.key").stat().st_mode) == 0o600
        assert "values.sealed" in fleet.server.log.read_text()
        copied = _database_bytes(fleet)
        assert all(piece not in copied for piece in _clear_pieces())
        _running_web(fleet, "polling")
        body = {"projectName": "Vault", "releaseVersion": "1.0.0", "environmentNames": ["Production"]}
        task_id = fleet.server.call("POST", "/api/Default/deployments/create/untenanted/v1", body)["taskId"]
        assert fleet.wait_task(task_id)["state"] == "success"
        assert _digest(SECRET) in fleet.log_text(task_id)
    finally:
        fleet.close()
