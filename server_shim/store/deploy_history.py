"""What a machine has been given: whether a release already went (or is going) to a machine.

A deployment target trigger (a reaction that deploys on ``machineRegistered`` or
``machineOnline``) asks this before deploying: a machine that comes online again after a
restart, and already has the project's latest release or a task on the way with it, is
left alone, as Octopus leaves it.
"""

from __future__ import annotations

import json
import sqlite3

from tentacle.protocol.nuget_versions import NuGetVersion


def release_task_for(
    conn: sqlite3.Connection, space: str, project: str, version: str, machine: str
) -> str | None:
    """The id of a queued, running or successful task deploying this release to ``machine``, or None."""
    rows = conn.execute(
        "SELECT task_id, coordinator FROM tasks WHERE space = ? AND project = ? AND kind = 'deployment'"
        " AND lower(release_version) = lower(?) AND state IN ('queued', 'running', 'success')"
        " ORDER BY created_at DESC",
        (space, project, str(NuGetVersion.parse(version))),
    )
    for row in rows:
        targets = json.loads(row["coordinator"]).get("targets", [])
        if any(target.get("machineName") == machine for target in targets):
            return str(row["task_id"])
    return None
