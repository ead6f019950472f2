"""`signing-key rotate` and `signing-key status`: the key that signs every plan and gate.

server-shim signing-key rotate           (API client: one request) prints the new key id alone
server-shim signing-key status [--json]  (API client: one request) keys held, machines lacking the current

After a rotation the server hands the new key to every tentacle over the old key's
signature: online ones at once, the others when they are next reached. The old key stays
in the home until no registered machine pins it; a machine that never comes back keeps it
there (it is listed here) until `server-shim machines remove NAME`.
"""

from __future__ import annotations

import argparse
import json
import sys

from server_shim.cli.command import ClientCommand, Command
from tentacle.common.paths import InstancePaths


class SigningKeyRotate(ClientCommand):
    """A new plan-signing key, handed to every tentacle over the old one's signature."""

    words = ("signing-key", "rotate")
    help = "make a new plan-signing key and hand it to every tentacle (prints its key id)"

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        rotated = self.call(client.request("POST", "/api/signing-keys/rotate/v1", {}))
        print(rotated["keyId"])
        print(
            f"replaces key {rotated['previousKeyId']}; {rotated['pendingMachines']} machine(s) to hand it to"
            " (see `server-shim signing-key status`)",
            file=sys.stderr,
        )
        return 0


class SigningKeyStatus(ClientCommand):
    """The signing keys held and the machines that have not pinned the current one."""

    words = ("signing-key", "status")
    help = "list the signing keys held and the machines still to get the current one"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        client = self.client(paths, args)
        status = self.call(client.request("GET", "/api/signing-keys/v1"))
        if args.json:
            print(json.dumps(status, indent=2))
            return 0
        print(f"current key: {status['currentKeyId']} ({status['publicKey']})")
        for key in status["keys"]:
            mark = "current" if key["current"] else "old, kept for hand-overs"
            print(f"  {key['keyId']}  {mark:<24} pinned by {key['machines']} machine(s)")
        for machine in status["pending"]:
            print(f"  waiting: {machine['name']} (pins {machine['keyId'] or 'no key yet'})")
        return 0


COMMANDS: list[Command] = [SigningKeyRotate(), SigningKeyStatus()]
