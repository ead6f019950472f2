"""Token takeover (issue 15, item 1): a registration token never replaces a machine it was not made for.

Real processes: `server-shim run`, `tentacle register` and `tentacle run`, in both modes.
"""

from __future__ import annotations

import http.client
import json
import ssl

import pytest

from rigs.instances import wait_until
from tests.real_fleet import RealFleet

SECRET = "prod-db-password-7c1e"


def _token(fleet: RealFleet, *flags: str) -> str:
    return fleet.server.cli("token", "create", *flags)


def _prod_01(fleet: RealFleet, mode: str) -> str:
    """prod-01 registered in Production (role web) and running; its thumbprint."""
    done = fleet.register("prod-01", mode, _token(fleet, "--environment", "Production"))
    assert done.returncode == 0, done.stderr
    fleet.run_tentacle("prod-01")
    fleet.wait_online("prod-01")
    return str(fleet.machines()["prod-01"]["thumbprint"])


def test_a_staging_token_with_force_cannot_replace_a_production_machine(
    real_fleet: RealFleet, mode: str
) -> None:
    """The issue's attack: a Staging token, --force and a Production name are refused; nothing changes."""
    thumbprint = _prod_01(real_fleet, mode)
    staging = _token(real_fleet, "--environment", "Staging", "--uses", "5")
    attacker = real_fleet.root / "attacker"
    for environment in ("Staging", "Production"):
        done = real_fleet.register(
            "prod-01", mode, staging, environment=environment, force=True, home=attacker
        )
        assert done.returncode == 1, done.stdout
        assert "server-shim machines replace prod-01" in done.stderr or "may register only" in done.stderr
    machine = real_fleet.machines()["prod-01"]
    assert machine["thumbprint"] == thumbprint and machine["environments"] == ["Production"]
    assert machine["status"] == "online"  # its certificate was not revoked: its connection stands


def test_an_unscoped_token_cannot_replace_an_existing_machine_either(real_fleet: RealFleet) -> None:
    """Replacing needs a token made for that machine: even an unlimited token registers new names only."""
    thumbprint = _prod_01(real_fleet, "polling")
    done = real_fleet.register(
        "prod-01", "polling", _token(real_fleet), force=True, home=real_fleet.root / "other"
    )
    assert done.returncode == 1 and "needs a token made for it" in done.stderr
    assert real_fleet.machines()["prod-01"]["thumbprint"] == thumbprint


def test_machines_replace_gives_a_one_use_token_for_that_machine_alone(real_fleet: RealFleet) -> None:
    """`machines replace NAME` (API key) prints a token that replaces NAME once and registers nothing else."""
    old = _prod_01(real_fleet, "polling")
    token = real_fleet.api_cli("machines", "replace", "prod-01")
    other = real_fleet.register("web-07", "polling", token, home=real_fleet.root / "web-07")
    assert other.returncode == 1 and "made for machine 'prod-01'" in other.stderr
    newcomer = real_fleet.root / "newcomer"
    done = real_fleet.register("prod-01", "polling", token, force=True, home=newcomer)
    assert done.returncode == 0, done.stderr
    assert real_fleet.machines()["prod-01"]["thumbprint"] != old
    again = real_fleet.register("prod-01", "polling", token, force=True, home=real_fleet.root / "third")
    assert again.returncode == 1 and "used up" in again.stderr


def test_machines_replace_needs_an_api_key_and_an_existing_machine(real_fleet: RealFleet) -> None:
    """Without the operator's key there is no replacement token; for an unknown machine, a 404."""
    status, body = real_fleet.server.api("POST", "/api/Default/machines/nobody/replace/v1", {})
    assert status == 404 and "nobody" in body["error"]["message"]
    ctx = ssl.create_default_context(cafile=str(real_fleet.server.home / "ca.pem"))
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", real_fleet.server.api_port, context=ctx, timeout=30)
    conn.request("POST", "/api/Default/machines/nobody/replace/v1", "{}", {"X-Api-Key": "API-wrong"})
    answer = conn.getresponse()
    assert answer.status == 401 and json.loads(answer.read())["error"]["code"] == "unauthorized"
    conn.close()


def test_a_token_made_for_a_machine_stays_inside_its_scope(real_fleet: RealFleet) -> None:
    """A Staging token made for prod-01 cannot take the Production prod-01; one made without scope can."""
    _prod_01(real_fleet, "polling")
    scoped = _token(real_fleet, "--machine", "prod-01", "--environment", "Staging")
    done = real_fleet.register(
        "prod-01", "polling", scoped, environment="Staging", force=True, home=real_fleet.root / "x"
    )
    assert done.returncode == 1 and "outside this token's Staging" in done.stderr
    named = _token(real_fleet, "--machine", "prod-01")
    done = real_fleet.register("prod-01", "polling", named, force=True, home=real_fleet.root / "y")
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_replaced_machines_tasks_fail_and_never_reach_the_newcomer(
    real_fleet: RealFleet, mode: str
) -> None:
    """A task waiting for prod-01 fails naming the replacement; the newcomer gets no plan, no secret."""
    old_thumbprint = _prod_01(real_fleet, mode)
    real_fleet.stop_tentacle("prod-01")
    wait_until(lambda: real_fleet.machines()["prod-01"]["status"] == "offline", 30, what="prod-01 offline")
    project = {
        "name": "Shop",
        "steps": [{"name": "Show", "roles": ["web"], "script": {"syntax": "bash", "body": 'echo "$Db"'}}],
        "variables": [{"name": "Db", "value": SECRET, "environments": ["Production"], "sensitive": True}],
    }
    task_id = real_fleet.deploy(project)
    token = real_fleet.api_cli("machines", "replace", "prod-01")
    newcomer = real_fleet.root / "newcomer"
    done = real_fleet.register("prod-01", mode, token, force=True, home=newcomer)
    assert done.returncode == 0, done.stderr
    real_fleet.run_tentacle("newcomer", home=newcomer)
    real_fleet.wait_online("prod-01")
    ended = real_fleet.wait_task(task_id)
    assert ended["state"] == "failed"
    assert "replaced by a new registration" in ended["error"] and "prod-01" in ended["error"]
    assert old_thumbprint not in ended["error"]  # it names the newcomer's certificate
    assert not (newcomer / "state" / "tasks" / task_id).exists()
    assert SECRET not in real_fleet.log("newcomer")
