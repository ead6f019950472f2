"""Plans to test with: a two-step process, its packages and feeds, and `plan_for` to resolve one."""

from __future__ import annotations

from collections.abc import Sequence

from tentacle.protocol.plan import PackageRef, Plan, resolve_plan
from tentacle.protocol.process import parse_process

WEB_SHA = "a" * 128
DB_SHA = "b" * 128
PACKAGES = {
    "OctoPetShop.Web": PackageRef("OctoPetShop.Web", "1.2.0", WEB_SHA, 1234, "web.1.2.0.nupkg"),
    "OctoPetShop.Db": PackageRef("OctoPetShop.Db", "3.0.1", DB_SHA, 99, "db.3.0.1.nupkg"),
}
FEEDS = {"mirrors": ["https://m1.example/v3/index.json", "https://m2.example/v3/index.json"]}

PROCESS = parse_process(
    {
        "name": "OctoPetShop",
        "steps": [
            {
                "name": "Open VPN",
                "phase": "preAcquisition",
                "roles": ["web"],
                "script": {"syntax": "bash", "body": "vpn-up.sh"},
            },
            {
                "name": "Deploy web",
                "roles": ["web"],
                "package": {"id": "OctoPetShop.Web"},
                "script": {"syntax": "bash", "body": 'cat "$PACKAGE_DIR/readme.txt"'},
            },
            {
                "name": "Migrate",
                "roles": ["db"],
                "package": {"id": "OctoPetShop.Db", "feed": "mirrors", "acquisition": "pull"},
                "script": {"syntax": "bash", "body": "./migrate.sh"},
                "timeoutSeconds": 120,
            },
            {
                "name": "Smoke test",
                "roles": ["web", "db"],
                "script": {"syntax": "python3", "body": "print('ok')"},
            },
        ],
        "variables": [
            {"name": "Db.Password", "value": "dev-pw", "sensitive": True},
            {
                "name": "Db.Password",
                "value": "prod-pw",
                "environments": ["Production"],
                "sensitive": True,
            },
            {"name": "Greeting", "value": "hello"},
            {"name": "Api Key", "value": "k3y", "roles": ["web"], "sensitive": True},
        ],
    }
)


def plan_for(
    machine: str,
    roles: Sequence[str],
    environment: str = "Production",
    packages: dict[str, PackageRef] = PACKAGES,
) -> Plan:
    """The example process resolved for one machine."""
    return resolve_plan(
        task_id="T-1",
        kind="deployment",
        steps=PROCESS.steps,
        variables=PROCESS.variables,
        project_name="OctoPetShop",
        release_version="1.0.0",
        environment=environment,
        machine_name=machine,
        machine_roles=roles,
        packages=packages,
        feeds=FEEDS,
    )
