"""The shape of every `server-shim` command, and what the commands of one kind share.

A command is a `Command` subclass: the ``words`` that name it (``("release", "create")``),
its help, its flags and its `run`. Two kinds share more:

- `ClientCommand`: acts on a running server through its API, exactly one request per
  operation (plus those of ``--follow``). It takes the client flags (``--server``,
  ``--api-key``, ``--server-thumbprint``, ``--ca``, ``--space``) and builds its `ApiClient`
  from them and the home or the user's login (see `server_shim.cli.api_client`).
- `LocalCommand`: acts on the instance's own files and database (``init``, ``token
  create``, ``package push``), whether or not the server runs.

`build_parser` turns a list of commands into one argparse tree: commands that share a
first word become its subcommands; a bare command may share its word with subcommands
(``machines`` lists, ``machines remove NAME`` removes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from server_shim import server_config as cfg
from server_shim.cli.api_client import ApiClient, ClientFlags
from server_shim.store import sealing
from server_shim.store.database import Database
from tentacle.common.paths import InstancePaths

T = TypeVar("T")
Subparsers = argparse._SubParsersAction  # argparse's own type for add_subparsers' result


class Command:
    """One action of the command line."""

    words: ClassVar[tuple[str, ...]]
    help: ClassVar[str]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's flags and arguments."""

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        """Do it; the exit code."""
        raise NotImplementedError


class ClientCommand(Command):
    """A command that talks to a running server's API."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The client flags, then the command's own (`add_options`)."""
        add_client_flags(parser)
        self.add_options(parser)

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """The command's own flags."""

    @staticmethod
    def client(paths: InstancePaths, args: argparse.Namespace) -> ApiClient:
        """The API client the flags, the home or the user's login describe."""
        flags = ClientFlags(
            server=args.server,
            api_key=args.api_key,
            ca=args.ca,
            thumbprint=args.server_thumbprint,
            space=args.space,
            home_given=bool(getattr(args, "home", None) or os.environ.get("SERVER_SHIM_HOME")),
        )
        return ApiClient.from_flags(paths, flags)

    @staticmethod
    def call(work: Coroutine[Any, Any, T]) -> T:
        """Run one request (or a follow loop) to its end."""
        return asyncio.run(work)


class LocalCommand(Command):
    """A command that works on the instance's files and database directly."""

    @staticmethod
    @contextlib.contextmanager
    def database(paths: InstancePaths) -> Iterator[Database]:
        """The instance's database, closed afterwards; a clear error when never initialised."""
        config = cfg.load(paths)
        # The key is only read here, never made: the server's first start makes it, as its user.
        db = Database(config.database_location(paths), sealing.load(paths.config, paths.state))
        try:
            yield db
        finally:
            db.close()


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """Where the server is, how to prove who we are and how to know the server.

    Defaults come from $SERVER_SHIM_* (a reaction's script finds SERVER_SHIM_URL,
    SERVER_SHIM_API_KEY, SERVER_SHIM_CA and SERVER_SHIM_SPACE in its environment, so
    `server-shim deploy ...` there needs no flags), then --home, else the user's
    `server-shim login`, else the default home.
    """
    env = os.environ.get
    parser.add_argument(
        "--server",
        default=env("SERVER_SHIM_URL"),
        help="server URL, https:// only (default: $SERVER_SHIM_URL, the login's, or the public_url)",
    )
    parser.add_argument(
        "--api-key",
        default=env("SERVER_SHIM_API_KEY"),
        help="API key (default: $SERVER_SHIM_API_KEY, the login's, or the instance's admin key)",
    )
    parser.add_argument(
        "--server-thumbprint",
        metavar="SHA256",
        default=env("SERVER_SHIM_THUMBPRINT"),
        help="accept only the server certificate with this thumbprint (`server-shim show-thumbprint`;"
        " default: $SERVER_SHIM_THUMBPRINT, the login's, or the instance's own certificate)",
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        default=env("SERVER_SHIM_CA"),
        help="without a thumbprint: accept a certificate of this CA that names the URL's host"
        " (checked against its subjectAltName; default: $SERVER_SHIM_CA)",
    )
    parser.add_argument(
        "--space",
        default=env("SERVER_SHIM_SPACE") or "Default",
        help="the space to act in (default: $SERVER_SHIM_SPACE, else Default)",
    )


def build_parser(
    parser: argparse.ArgumentParser, commands: Sequence[Command], groups: Mapping[str, str]
) -> None:
    """Add every command to `parser`; the chosen one lands in ``args.command``.

    ``groups`` gives the help of a first word whose commands are all subcommands.
    """
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    by_word: dict[str, list[Command]] = {}
    for command in commands:
        by_word.setdefault(command.words[0], []).append(command)
    for word, members in by_word.items():
        bare = next((c for c in members if len(c.words) == 1), None)
        actions = [c for c in members if len(c.words) > 1]
        helps = bare.help if bare else groups.get(word, word)
        group = sub.add_parser(word, help=helps, description=helps)
        if bare is not None:
            bare.add_arguments(group)
            group.set_defaults(command=bare)
        if actions:
            verbs = group.add_subparsers(dest="action", required=bare is None, metavar="ACTION")
            for action in actions:
                leaf = verbs.add_parser(action.words[1], help=action.help, description=action.help)
                action.add_arguments(leaf)
                leaf.set_defaults(command=action)
