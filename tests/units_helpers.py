"""Helpers for tests of systemd units: the interpreter a unit may name, and a unit file's
directives read."""

from __future__ import annotations

import sys

EXECUTABLE = sys.executable  # verify needs ExecStart= to name a real program


def _directives(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit, in order, keys that repeat keeping each value."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values
