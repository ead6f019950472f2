"""`login` and `logout`: an operator's saved server, thumbprint and API key.

server-shim login URL --server-thumbprint SHA256 [--api-key KEY]
server-shim logout

`login` checks the three with one request (the machines list) before it saves them, so
a wrong key or thumbprint is found now, not at the next command. The key comes from
``--api-key``, else ``$SERVER_SHIM_API_KEY``, else a prompt (or one line of stdin), so
that it need not sit in the shell's history.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

from server_shim.cli import login_file
from server_shim.cli.api_client import API_KEY_VARIABLE, ApiClient, ClientFlags
from server_shim.cli.command import Command
from tentacle.common.paths import InstancePaths
from tentacle.errors import UsageError


class Login(Command):
    """Save a server, its thumbprint and an API key for the API commands."""

    words = ("login",)
    help = "save a server URL, its thumbprint and an API key for later commands (~/.config/server-shim)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("url", help="the server's URL (https://)")
        parser.add_argument(
            "--server-thumbprint",
            required=True,
            metavar="SHA256",
            help="the server certificate's thumbprint (`server-shim show-thumbprint` on its host)",
        )
        parser.add_argument("--api-key", help=f"the API key (default: ${API_KEY_VARIABLE}, else asked for)")
        parser.add_argument("--space", default="Default", help="the space to check access in")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        key = args.api_key or os.environ.get(API_KEY_VARIABLE) or _ask_key()
        # home_given: the login being replaced must not fill in anything.
        flags = ClientFlags(
            server=args.url, api_key=key, thumbprint=args.server_thumbprint, space=args.space, home_given=True
        )
        client = ApiClient.from_flags(paths, flags)
        assert client.pin is not None, "a thumbprint was given"
        asyncio.run(client.request("GET", client.path("machines", "v1")))
        where = login_file.path(os.environ)
        login_file.save(where, login_file.Login(client.server, client.pin, client.api_key))
        print(f"logged in to {client.server}; saved in {where}", file=sys.stderr)
        return 0


class Logout(Command):
    """Forget the saved login."""

    words = ("logout",)
    help = "forget the login saved by `server-shim login`"

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        where = login_file.path(os.environ)
        where.unlink(missing_ok=True)
        print(f"removed {where}", file=sys.stderr)
        return 0


def _ask_key() -> str:
    """The API key from the terminal (not echoed), or one line of stdin."""
    key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    if not key.strip():
        raise UsageError(f"an API key is needed: --api-key KEY, ${API_KEY_VARIABLE}, or type it")
    return key.strip()


COMMANDS: list[Command] = [Login(), Logout()]
