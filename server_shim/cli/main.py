"""The `server-shim` command line: parse, build the config, call one function.

Commands that print one value print it alone on stdout. Exit codes: 0 ok,
1 failed, 2 usage, 78 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from server_shim import app, ca
from server_shim import server_config as cfg
from server_shim.cli import feed_commands as feed_cli
from server_shim.cli import project_commands as projects_cli
from server_shim.cli import task_commands as tasks_cli
from server_shim.cli.api_client import ApiClient
from server_shim.server_config import Endpoint, ServerConfig
from server_shim.store import accounts
from server_shim.store import machine_rows as machines_store
from server_shim.store.database import Database
from tentacle.common.logs import setup_logging
from tentacle.common.paths import InstancePaths, resolve
from tentacle.errors import TentacleError, UsageError
from tentacle.net import pki

Command = Callable[[InstancePaths, argparse.Namespace], int]


class CommandModule(Protocol):
    """A module that adds commands: `add_parsers(sub)` and a `COMMANDS` table."""

    COMMANDS: dict[str, Command]

    def add_parsers(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add this module's subcommands."""


# Later layers (feed, projects, deployments) register their command modules here.
EXTENSIONS: list[CommandModule] = [projects_cli, feed_cli, tasks_cli]


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="server URL (default: public_url of the instance)")
    parser.add_argument("--api-key", help="API key (default: the instance's admin key)")
    parser.add_argument("--ca", help="CA certificate to trust (default: the instance's CA)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="server-shim", description="Deployment server for tentacles.")
    parser.add_argument(
        "--home", help="instance folder (default: $SERVER_SHIM_HOME, else system or user dirs)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="create the database, CA, server certificate and admin API key")
    init.add_argument(
        "--public-url", default="https://127.0.0.1:8443", help="URL tentacles and operators use"
    )
    init.add_argument("--listen", metavar="HOST:PORT", help="API address to bind (default 0.0.0.0:8443)")
    init.add_argument("--polling-listen", metavar="HOST:PORT", help="polling address (default 0.0.0.0:10943)")
    run = sub.add_parser("run", help="run the server in the foreground")
    run.add_argument("--listen", metavar="HOST:PORT", help="API address (overrides the config)")
    run.add_argument("--polling-listen", metavar="HOST:PORT", help="polling address (overrides the config)")
    sub.add_parser("show-thumbprint", help="print the server certificate's thumbprint")
    sub.add_parser("show-ca", help="print the CA certificate (PEM) that mirrors use to check tentacles")
    sub.add_parser(
        "show-crl",
        help="print the revocation list (PEM) of removed machines, for mirrors' ssl_crl (valid 365 days)",
    )
    token = sub.add_parser("token", help="registration tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create a registration token (printed alone)")
    create.add_argument("--uses", type=int, default=1, help="how many registrations it allows (default 1)")
    create.add_argument("--expires", default="24h", help="lifetime: 30m, 24h, 7d (default 24h)")
    create.add_argument(
        "--environment",
        action="append",
        default=[],
        metavar="NAME",
        help="machines registered with it may join only these environments (repeat; default: any)",
    )
    create.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="NAME",
        help="machines registered with it may take only these roles (repeat; default: any)",
    )
    key = sub.add_parser("api-key", help="API keys").add_subparsers(dest="action", required=True)
    key.add_parser("create", help="create an API key (printed alone)").add_argument("name")
    machines = sub.add_parser("machines", help="list machines (or remove one)")
    _client_flags(machines)
    machines.add_argument("--json", action="store_true", help="machine-readable output")
    msub = machines.add_subparsers(dest="action")
    remove = msub.add_parser("remove", help="remove a machine and revoke its certificate")
    remove.add_argument("name")
    _client_flags(remove)
    _service_parser(sub)
    for module in EXTENSIONS:
        module.add_parsers(sub)
    return parser


def _service_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = sub.add_parser("service", help="install or remove the systemd unit")
    actions = service.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="write, enable (and start) the unit")
    install.add_argument("--user", default="server-shim", help="system user to run as (default server-shim)")
    install.add_argument("--start", action="store_true", help="start it now")
    install.add_argument("--dry-run", action="store_true", help="print the unit and change nothing")
    actions.add_parser("uninstall", help="stop, disable and remove the unit")


def parse_endpoint(text: str, flag: str) -> Endpoint:
    """HOST:PORT into an Endpoint."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{flag} must be HOST:PORT, not {text!r}")
    try:
        return Endpoint(host.strip("[]") or "0.0.0.0", int(port))
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


def cmd_init(paths: InstancePaths, args: argparse.Namespace) -> int:
    if (paths.config / cfg.CONFIG_FILE).exists():
        raise UsageError(f"{paths.config} is already initialised")
    try:
        config = ServerConfig(public_url=args.public_url)
    except ValueError as exc:
        raise UsageError(f"--public-url: {exc}") from exc
    if args.listen:
        config = config.with_changes(listen=parse_endpoint(args.listen, "--listen"))
    if args.polling_listen:
        config = config.with_changes(polling=parse_endpoint(args.polling_listen, "--polling-listen"))
    paths.create()
    thumb = ca.create(paths.config, urlsplit(config.public_url).hostname or "localhost")
    db = Database(paths.state / cfg.DATABASE_FILE)
    admin_key = db.sync(accounts.create_api_key, "admin")
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


def cmd_run(paths: InstancePaths, args: argparse.Namespace) -> int:
    config = cfg.load(paths)
    if args.listen:
        config = config.with_changes(listen=parse_endpoint(args.listen, "--listen"))
    if args.polling_listen:
        config = config.with_changes(polling=parse_endpoint(args.polling_listen, "--polling-listen"))
    setup_logging(config.log_level)
    return asyncio.run(app.run(paths, config))


def cmd_show_thumbprint(paths: InstancePaths, args: argparse.Namespace) -> int:
    print(pki.cert_thumbprint(pki.load_cert(paths.config / cfg.SERVER_CERT)))
    return 0


def cmd_show_ca(paths: InstancePaths, args: argparse.Namespace) -> int:
    print(pki.cert_pem(pki.load_cert(paths.config / cfg.CA_CERT)).decode(), end="")
    return 0


def cmd_show_crl(paths: InstancePaths, args: argparse.Namespace) -> int:
    db = _db(paths)
    try:
        revoked = db.sync(machines_store.revoked_certificates)
    finally:
        db.close()
    print(ca.Authority(paths.config).crl(revoked).decode(), end="")
    return 0


def _db(paths: InstancePaths) -> Database:
    cfg.load(paths)  # a clear error when the instance was never initialised
    return Database(paths.state / cfg.DATABASE_FILE)


def cmd_token(paths: InstancePaths, args: argparse.Namespace) -> int:
    ttl = accounts.parse_duration(args.expires)
    db = _db(paths)
    try:
        print(db.sync(accounts.create_token, args.uses, ttl, args.environment, args.role))
    finally:
        db.close()
    return 0


def cmd_api_key(paths: InstancePaths, args: argparse.Namespace) -> int:
    db = _db(paths)
    try:
        print(db.sync(accounts.create_api_key, args.name))
    finally:
        db.close()
    return 0


def cmd_machines(paths: InstancePaths, args: argparse.Namespace) -> int:
    client = ApiClient.from_home(paths, args.server, args.api_key, args.ca)
    if args.action == "remove":
        answer = asyncio.run(client.request("DELETE", client.path("machines", args.name, "v1")))
        print(f"removed {answer['name']}; revoked certificate {answer['revokedThumbprint']}")
        print("mirrors: publish a fresh `server-shim show-crl` as their ssl_crl", file=sys.stderr)
        return 0
    items = asyncio.run(client.request("GET", client.path("machines", "v1")))["items"]
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


def cmd_service(paths: InstancePaths, args: argparse.Namespace) -> int:
    from tentacle.common import units as systemd  # only this command needs it

    home = str(paths.config) if args.home else None
    exe: str | list[str] = shutil.which("server-shim") or [sys.executable, "-m", "server_shim"]
    if args.action == "uninstall":
        systemd.uninstall_service("server-shim", home=home)
        return 0
    text = systemd.install_service(
        "server-shim",
        executable=exe,
        home=home,
        user=args.user,
        as_root=False,
        start=args.start,
        dry_run=args.dry_run,
        instance_dirs=[paths.config],
    )
    if args.dry_run:
        print(text, end="")
    return 0


COMMANDS: dict[str, Command] = {
    "init": cmd_init,
    "run": cmd_run,
    "show-thumbprint": cmd_show_thumbprint,
    "show-ca": cmd_show_ca,
    "show-crl": cmd_show_crl,
    "token": cmd_token,
    "api-key": cmd_api_key,
    "machines": cmd_machines,
    "service": cmd_service,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `server-shim` command."""
    args = _parser().parse_args(argv)
    commands = dict(COMMANDS)
    for module in EXTENSIONS:
        commands.update(module.COMMANDS)
    try:
        return commands[args.command](resolve("server-shim", args.home), args)
    except TentacleError as exc:
        print(f"server-shim: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except PermissionError as exc:
        # Unreadable keys or folders are a setup problem: exit 78 so systemd does not restart-loop.
        print(
            f"server-shim: error: {exc.filename}: permission denied (can the service user read it?)",
            file=sys.stderr,
        )
        return 78
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
