"""Which tenants a tenanted deployment reaches.

The request names tenants (``tenantNames``), a tag filter (``tenantTags``: tags of one set
OR, sets AND), or both: the deployment reaches the named tenants and every tenant the
filter selects that is connected to the project in the environment. A named tenant that is
not connected is an error naming it (it was asked for by name); a tenant that only the
filter selects and that is not connected is passed over. Every name and tag must exist.

Errors::

    TenantNotFound       404   a named tenant does not exist (tenants)
    TenantError          400   a tag that is not TagSet/Tag of an existing set (tenants)
    TenantNotConnected   400   a named tenant is not connected to the project and environment
    NoTenants            400   no tenant given, the project has no tenants, or none is selected
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from server_shim.store import tenants
from server_shim.store.tenants import StoredTenant, TenantError, TenantNotFound
from tentacle.errors import InvalidInput


class TenantNotConnected(InvalidInput):
    """A named tenant is not connected to the project in the environment."""


class NoTenants(InvalidInput):
    """The deployment would reach no tenant."""


def choose(
    conn: sqlite3.Connection,
    space: str,
    project: str,
    environment: str,
    names: Sequence[str],
    tags: Sequence[str],
) -> list[StoredTenant]:
    """The tenants to deploy to, by name; raises naming what is wrong."""
    if not names and not tags:
        raise NoTenants(
            "tenantNames: give tenantNames or tenantTags (or both)", details={"path": "tenantNames"}
        )
    known = tenants.names(conn, space)
    for index, name in enumerate(names):
        if name not in known:
            raise TenantNotFound(
                f"tenantNames[{index}]: tenant {name!r} does not exist in space {space!r}",
                details={"path": f"tenantNames[{index}]", "tenant": name},
            )
    problems = tenants.tag_problems(conn, space, tags, "tenantTags")
    if problems:
        raise TenantError(problems)
    if not tenants.connected_to_project(conn, space, project):
        raise NoTenants(
            f"project {project!r} has no tenants connected: deploy it untenanted"
            " (deployments/create/untenanted/v1), or connect tenants to it",
            details={"project": project},
        )
    connected = set(tenants.connected(conn, space, project, environment))
    for index, name in enumerate(names):
        if name not in connected:
            raise TenantNotConnected(
                f"tenantNames[{index}]: tenant {name!r} is not connected to project {project!r}"
                f" in environment {environment!r}",
                details={"path": f"tenantNames[{index}]", "tenant": name},
            )
    chosen = set(names)
    if tags:
        by_tags = [name for name in tenants.tagged(conn, space, tags) if name in connected]
        if not by_tags and not names:
            raise NoTenants(
                f"tenantTags: no tenant with tags {', '.join(tags)} is connected to project {project!r}"
                f" in environment {environment!r}",
                details={"path": "tenantTags"},
            )
        chosen.update(by_tags)
    return [tenants.get(conn, space, name) for name in sorted(chosen)]
