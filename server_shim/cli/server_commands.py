"""`init`, `run`, `show-thumbprint`, `show-ca`, `show-crl` and `service`: the server itself.

server-shim init [--public-url URL] [--listen HOST:PORT] [--polling-listen HOST:PORT]
                 [--database postgresql://USER@HOST/DB] [--node NAME]
server-shim run [--listen HOST:PORT] [--polling-listen HOST:PORT] [--node NAME]
server-shim show-thumbprint | show-ca | show-crl
server-shim service install [--user NAME] [--start] [--dry-run] | service uninstall
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from urllib.parse import urlsplit

from server_shim import app, ca
from server_shim import server_config as cfg
from server_shim.cli.command import Command, LocalCommand
from server_shim.server_config import Endpoint, ServerConfig
from server_shim.store import accounts, node_rows, sealing
from server_shim.store import machine_rows as machines_store
from server_shim.store.database import Database
from server_shim.store.signing_keys import Keyring
from tentacle.common.logs import setup_logging
from tentacle.common.paths import InstancePaths
from tentacle.errors import UsageError
from tentacle.net import pki


def parse_endpoint(text: str, flag: str) -> Endpoint:
    """HOST:PORT into an Endpoint."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{flag} must be HOST:PORT, not {text!r}")
    try:
        return Endpoint(host.strip("[]") or "0.0.0.0", int(port))
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


def with_listen(config: ServerConfig, args: argparse.Namespace) -> ServerConfig:
    """The configuration with ``--listen`` and ``--polling-listen`` applied."""
    if args.listen:
        config = config.with_changes(listen=parse_endpoint(args.listen, "--listen"))
    if args.polling_listen:
        config = config.with_changes(polling=parse_endpoint(args.polling_listen, "--polling-listen"))
    return config


class Init(Command):
    """Create the instance: database, CA, server certificate, admin API key."""

    words = ("init",)
    help = "create the database, CA, server certificate and admin API key"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--public-url", default="https://127.0.0.1:8443", help="URL tentacles and operators use"
        )
        parser.add_argument(
            "--listen", metavar="HOST:PORT", help="API address to bind (default 0.0.0.0:8443)"
        )
        parser.add_argument(
            "--polling-listen", metavar="HOST:PORT", help="polling address (default 0.0.0.0:10943)"
        )
        parser.add_argument(
            "--database",
            metavar="URL",
            default="",
            help="a postgresql://USER@HOST/DB URL to keep everything in PostgreSQL 15+"
            " (default: SQLite, state/server.db); more nodes join it with `node join`",
        )
        parser.add_argument("--node", default="", help="this node's name (default: the host name)")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        if (paths.config / cfg.CONFIG_FILE).exists():
            raise UsageError(f"{paths.config} is already initialised")
        try:
            config = with_listen(
                ServerConfig(public_url=args.public_url, database=args.database, node=args.node), args
            )
        except ValueError as exc:
            raise UsageError(f"{exc}") from exc
        db = Database(config.database_location(paths)) if config.database else None
        if db is not None and db.sync(node_rows.holds_server):
            db.close()
            raise UsageError(
                f"{db.describe()} already holds a server: add a node to it with `server-shim node join`"
            )
        paths.create()
        thumb = ca.create(paths.config, urlsplit(config.public_url).hostname or "localhost")
        sealing.create_key(paths.config)
        if db is not None:
            db.close()
        db = Database(config.database_location(paths), sealing.load(paths.config))
        admin_key = db.sync(accounts.create_api_key, "admin")
        db.sync(Keyring.open, paths.config)  # the first plan-signing key
        token = db.sync(accounts.create_token, 1, 24 * 3600)
        db.close()
        pki.write_private(paths.config / cfg.ADMIN_KEY_FILE, admin_key.encode() + b"\n")
        cfg.save(paths, config)
        print(
            f"initialised {paths.config}\nserver thumbprint: {thumb}\nadmin API key: {admin_key}"
            f" (saved in {paths.config / cfg.ADMIN_KEY_FILE})\n\nregister a tentacle (token valid 24h, once):"
        )
        print(
            f"  tentacle register --server {config.public_url} --token {token} --server-thumbprint {thumb}"
            " --name NAME --environment ENV --role ROLE --polling"
        )
        return 0


class Run(Command):
    """The server in the foreground (what systemd starts)."""

    words = ("run",)
    help = "run the server in the foreground"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--listen", metavar="HOST:PORT", help="API address (overrides the config)")
        parser.add_argument(
            "--polling-listen", metavar="HOST:PORT", help="polling address (overrides the config)"
        )
        parser.add_argument(
            "--node",
            help="this node's name among the nodes on one database (overrides the config;"
            " default: the host name)",
        )

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        config = with_listen(cfg.load(paths), args)
        if args.node:
            try:
                config = config.with_changes(node=args.node)
            except ValueError as exc:
                raise UsageError(f"--node: {exc}") from exc
        setup_logging(config.log_level)
        return asyncio.run(app.run(paths, config))


class ShowThumbprint(Command):
    """The server certificate's thumbprint, alone."""

    words = ("show-thumbprint",)
    help = "print the server certificate's thumbprint"

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        print(pki.cert_thumbprint(pki.load_cert(paths.config / cfg.SERVER_CERT)))
        return 0


class ShowCa(Command):
    """The CA certificate, PEM."""

    words = ("show-ca",)
    help = "print the CA certificate (PEM) that mirrors use to check tentacles"

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        print(pki.cert_pem(pki.load_cert(paths.config / cfg.CA_CERT)).decode(), end="")
        return 0


class ShowCrl(LocalCommand):
    """The revocation list of removed machines, PEM."""

    words = ("show-crl",)
    help = "print the revocation list (PEM) of removed machines, for mirrors' ssl_crl (valid 365 days)"

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        with self.database(paths) as db:
            revoked = db.sync(machines_store.revoked_certificates)
        print(ca.Authority(paths.config).crl(revoked).decode(), end="")
        return 0


class ServiceInstall(Command):
    """Write, enable and (with --start) start the hardened unit."""

    words = ("service", "install")
    help = "write, enable (and start) the unit"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--user", default="server-shim", help="system user to run as (default server-shim)"
        )
        parser.add_argument("--start", action="store_true", help="start it now")
        parser.add_argument("--dry-run", action="store_true", help="print the unit and change nothing")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        from tentacle.common import units  # only this command needs it

        exe: str | list[str] = shutil.which("server-shim") or [sys.executable, "-m", "server_shim"]
        text = units.install_service(
            "server-shim",
            executable=exe,
            home=str(paths.config) if args.home else None,
            user=args.user,
            as_root=False,
            start=args.start,
            dry_run=args.dry_run,
            instance_dirs=[paths.config],
        )
        if args.dry_run:
            print(text, end="")
        return 0


class ServiceUninstall(Command):
    """Stop, disable and remove the unit."""

    words = ("service", "uninstall")
    help = "stop, disable and remove the unit"

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        from tentacle.common import units

        units.uninstall_service("server-shim", home=str(paths.config) if args.home else None)
        return 0


COMMANDS: list[Command] = [
    Init(),
    Run(),
    ShowThumbprint(),
    ShowCa(),
    ShowCrl(),
    ServiceInstall(),
    ServiceUninstall(),
]
