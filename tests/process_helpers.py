"""Process documents to test with: a valid example, a changed copy of it, and the problems a document has."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tentacle.protocol.process import ProcessError, parse_process


def example() -> dict[str, Any]:
    """The process document of design.md, with a runbook and scoped variables."""
    return {
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
                "package": {"id": "OctoPetShop.Web", "feed": "builtin", "acquisition": "push"},
                "script": {"syntax": "bash", "body": 'cat "$PACKAGE_DIR/readme.txt"'},
            },
            {
                "name": "Migrate",
                "roles": ["db"],
                "package": {"id": "OctoPetShop.Db", "feed": "mirrors", "acquisition": "pull"},
                "script": {"syntax": "python3", "body": "print('migrate')"},
                "timeoutSeconds": 600,
            },
        ],
        "runbooks": {
            "Restart": {
                "steps": [
                    {
                        "name": "Restart",
                        "roles": ["web"],
                        "package": {"id": "OctoPetShop.Tools"},
                        "script": {"syntax": "sh", "body": "systemctl restart web"},
                    }
                ]
            }
        },
        "variables": [
            {
                "name": "DbPassword",
                "value": "s3cret",
                "environments": ["Production"],
                "sensitive": True,
            },
            {"name": "LogLevel", "value": ""},
        ],
    }


def problems_of(doc: object, name: str | None = None) -> list[tuple[str, str]]:
    """The problems `parse_process` reports for ``doc``."""
    with pytest.raises(ProcessError) as caught:
        parse_process(doc, name)
    return caught.value.problems


def mutated(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """A copy of the example with ``change`` applied to it."""
    doc = copy.deepcopy(example())
    change(doc)
    return doc
