"""The `server-shim` command line: parse, then run the one command chosen.

Every command is a `Command` (server_shim.cli.command) listed in `COMMANDS`; the
modules that define them import nothing of this one, so there is no cycle. Commands
that print one value print it alone on stdout. Exit codes: 0 ok, 1 failed, 2 usage,
78 bad configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from server_shim.cli import (
    access_commands,
    feed_commands,
    list_commands,
    login_commands,
    node_commands,
    project_commands,
    reaction_commands,
    server_commands,
    signing_commands,
    task_commands,
    tenant_commands,
)
from server_shim.cli.command import Command, build_parser
from tentacle.common.paths import resolve
from tentacle.errors import exit_code_of

COMMANDS: list[Command] = [
    *server_commands.COMMANDS,
    *access_commands.COMMANDS,
    *login_commands.COMMANDS,
    *feed_commands.COMMANDS,
    *project_commands.COMMANDS,
    *task_commands.COMMANDS,
    *tenant_commands.COMMANDS,
    *signing_commands.COMMANDS,
    *reaction_commands.COMMANDS,
    *node_commands.COMMANDS,
    *list_commands.COMMANDS,
]

GROUPS = {
    "service": "install or remove the systemd unit",
    "token": "registration tokens",
    "api-key": "API keys",
    "package": "packages of the built-in feed",
    "feed": "export the built-in feed; name feeds of mirrors",
    "project": "projects (deployment processes)",
    "release": "releases",
    "runbook": "runbooks",
    "task": "tasks",
    "space": "spaces (everything belongs to one; --space NAME on client commands)",
    "tagset": "tag sets (tenant tags are named SET/TAG)",
    "tenant": "tenants",
    "signing-key": "the key that signs every plan and gate (rotate it, see who has it)",
    "reaction": "reactions: events in, actions out (HTTP requests, scripts, deployments)",
    "node": "server nodes sharing one PostgreSQL database",
}


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    root = argparse.ArgumentParser(prog="server-shim", description="Deployment server for tentacles.")
    root.add_argument("--home", help="instance folder (default: $SERVER_SHIM_HOME, else system or user dirs)")
    build_parser(root, COMMANDS, GROUPS)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `server-shim` command."""
    args = parser().parse_args(argv)
    command: Command = args.command
    return exit_code_of("server-shim", lambda: command.run(resolve("server-shim", args.home), args))


if __name__ == "__main__":
    sys.exit(main())
