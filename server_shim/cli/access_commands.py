"""Who may do what: registration tokens, API keys, and the machines they let in.

server-shim token create [--uses N] [--expires 24h] [--environment E] [--role R] [--machine NAME]
server-shim api-key create NAME [--scope feed:push ...]
server-shim machines [--json]          (API client: one request)
server-shim machines remove NAME       (API client: one request; revokes the certificate)
server-shim machines replace NAME      (API client: one request; a one-use token that may replace it)
"""

from __future__ import annotations

import argparse
import json
import sys

from server_shim.cli.command import ClientCommand, Command, LocalCommand
from server_shim.store import accounts
from tentacle.common.paths import InstancePaths


class TokenCreate(LocalCommand):
    """A registration token, printed alone."""

    words = ("token", "create")
    help = "create a registration token (printed alone)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--uses", type=int, default=1, help="how many registrations it allows (default 1)"
        )
        parser.add_argument("--expires", default="24h", help="lifetime: 30m, 24h, 7d (default 24h)")
        parser.add_argument(
            "--environment",
            action="append",
            default=[],
            metavar="NAME",
            help="machines registered with it may join only these environments (repeat; default: any)",
        )
        parser.add_argument(
            "--role",
            action="append",
            default=[],
            metavar="NAME",
            help="machines registered with it may take only these roles (repeat; default: any)",
        )
        parser.add_argument(
            "--machine",
            metavar="NAME",
            help="the token registers this machine name alone, and may replace the machine of that"
            " name (`tentacle register --force`); without it, a token registers new names only",
        )

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        ttl = accounts.parse_duration(args.expires)
        with self.database(paths) as db:
            token = db.sync(accounts.create_token, args.uses, ttl, args.environment, args.role, args.machine)
        print(token)
        return 0


class ApiKeyCreate(LocalCommand):
    """An API key, printed alone (stored hashed)."""

    words = ("api-key", "create")
    help = "create an API key (printed alone)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name")
        scopes = "; ".join(f"{name}: {what}" for name, what in accounts.SCOPES.items())
        parser.add_argument(
            "--scope",
            action="append",
            default=[],
            metavar="SCOPE",
            help=f"limit what the key may do (repeat); {scopes}",
        )

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        scopes = accounts.check_scopes(args.scope)
        with self.database(paths) as db:
            print(db.sync(accounts.create_api_key, args.name, scopes))
        return 0


class MachinesList(ClientCommand):
    """Every machine with its live status."""

    words = ("machines",)
    help = "list machines (or remove one)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        items = self.call(client.request("GET", client.path("machines", "v1")))["items"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        print(f"{'NAME':<20} {'STATUS':<8} {'MODE':<10} {'LAST SEEN':<21} {'ENVIRONMENTS':<16} ROLES")
        for m in items:
            print(
                f"{m['name']:<20} {m['status']:<8} {m['mode']:<10} {m['lastSeen'] or '-':<21} "
                f"{','.join(m['environments']):<16} {','.join(m['roles'])}"
            )
        return 0


class MachinesRemove(ClientCommand):
    """Remove a machine and revoke its certificate."""

    words = ("machines", "remove")
    help = "remove a machine and revoke its certificate"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        answer = self.call(client.request("DELETE", client.path("machines", args.name, "v1")))
        print(f"removed {answer['name']}; revoked certificate {answer['revokedThumbprint']}")
        print("mirrors: publish a fresh `server-shim show-crl` as their ssl_crl", file=sys.stderr)
        return 0


class MachinesReplace(ClientCommand):
    """A one-use token that may replace one machine, printed alone."""

    words = ("machines", "replace")
    help = (
        "print a one-use token that may replace this machine (and no other), for"
        " `tentacle register --name NAME --force --token TOKEN`"
    )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--expires", default="1h", help="lifetime: 30m, 24h, 7d (default 1h)")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        path = client.path("machines", args.name, "replace", "v1")
        issued = self.call(client.request("POST", path, {"expires": args.expires}))
        print(issued["token"])
        print(
            f"valid once until {issued['expiresAt']}, for machine {issued['machineName']} in"
            f" {','.join(issued['environments'])} with roles {','.join(issued['roles'])};"
            " its tasks still queued or running fail rather than reach the newcomer",
            file=sys.stderr,
        )
        return 0


COMMANDS: list[Command] = [TokenCreate(), ApiKeyCreate(), MachinesList(), MachinesRemove(), MachinesReplace()]
