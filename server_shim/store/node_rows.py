"""Server nodes sharing one database: who is alive, and which node owns which running task.

Filled in by the node machinery (server_shim.dispatch.nodes); `holds_server` lets `init`
refuse a database another server already uses.
"""

from __future__ import annotations

import sqlite3


def holds_server(conn: sqlite3.Connection) -> bool:
    """Whether the database already belongs to a server (it has an API key)."""
    return conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None
