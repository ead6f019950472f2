"""Several nodes on one PostgreSQL database: list, drain, join, and move a SQLite server there.

server-shim node list [--json]
server-shim node drain NAME [--timeout 120]
server-shim node secrets [--output FILE]          the CA key, signing and other keys (0600)
server-shim --home DIR2 node join --database URL --secrets FILE --public-url URL
                                   [--listen HOST:PORT] [--polling-listen HOST:PORT] [--node NAME]
server-shim migrate --from sqlite:PATH --to postgresql://USER@HOST/DB

Every node shares the database and the secrets: the CA that signs tentacles' certificates
and the server certificate they pin, so that a tentacle trusts every node alike.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import stat
import sys
import time
from pathlib import Path

from server_shim import server_config as cfg
from server_shim.cli.command import Command, LocalCommand
from server_shim.cli.server_commands import with_listen
from server_shim.server_config import ServerConfig
from server_shim.store import accounts, node_rows, transfer
from server_shim.store.database import Database, is_postgresql
from server_shim.store.signing_keys import KEY_DIR
from tentacle.common.paths import InstancePaths
from tentacle.errors import ConfigError, UsageError
from tentacle.net import pki

SECRET_FILES = (cfg.CA_CERT, cfg.CA_KEY, cfg.SERVER_CERT, cfg.SERVER_KEY)


class NodeList(LocalCommand):
    """The nodes on this database."""

    words = ("node", "list")
    help = "list the nodes on this database: state, heartbeat, tasks and agents"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        with self.database(paths) as db:
            nodes = db.sync(node_rows.listing)
        now = time.time()
        if args.json:
            print(json.dumps([_node_json(n, now) for n in nodes], indent=2))
            return 0
        print(f"{'NAME':<20} {'STATE':<9} {'ALIVE':<5} {'HEARTBEAT':>10} {'TASKS':>6} {'AGENTS':>7}  API")
        for n in nodes:
            age = f"{now - n.heartbeat:.1f}s ago"
            alive = "yes" if n.alive(now) else "no"
            print(f"{n.name:<20} {n.state:<9} {alive:<5} {age:>10} {n.tasks:>6} {n.agents:>7}  {n.api_url}")
        return 0


def _node_json(n: node_rows.NodeRow, now: float) -> dict[str, object]:
    return {
        "name": n.name,
        "state": n.state,
        "alive": n.alive(now),
        "heartbeat": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(n.heartbeat)),
        "heartbeatAgeSeconds": round(now - n.heartbeat, 1),
        "tasks": n.tasks,
        "agents": n.agents,
        "apiUrl": n.api_url,
        "pollingUrl": n.polling_url,
        "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(n.started_at)),
        "schemaVersion": n.schema_version,
    }


class NodeDrain(LocalCommand):
    """Hand a node's tasks to the others without failing them, then stop it."""

    words = ("node", "drain")
    help = "hand a node's tasks to the other nodes (none fails), then stop it; waits until it has"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="the node to drain")
        parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        with self.database(paths) as db:
            node = db.sync(node_rows.set_state, args.name, "draining")
            if not node.alive(time.time()):  # nobody there to drain itself: its tasks go now
                count = db.sync(node_rows.release_all, args.name)
                print(f"node {args.name} was not running; {count} task(s) handed to the other nodes")
                return 0
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                node = next(n for n in db.sync(node_rows.listing) if n.name == args.name)
                if node.state == "stopped":
                    print(f"node {args.name} drained and stopped")
                    return 0
                time.sleep(0.5)
        print(
            f"server-shim: error: node {args.name} did not stop within {args.timeout:.0f} s", file=sys.stderr
        )
        return 1


class NodeSecrets(LocalCommand):
    """What another node needs to be the same server: its CA, certificate and keys."""

    words = ("node", "secrets")
    help = "print the CA key, the server certificate and key (what `node join` needs); keep it secret"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--output", metavar="FILE", help="write here (0600) instead of stdout")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        config = cfg.load(paths)
        if not config.database:
            raise UsageError("this server keeps its data in SQLite: only a PostgreSQL server has nodes")
        files = {name: paths.config / name for name in SECRET_FILES}
        # The encryption key and the plan-signing keys: in the config folder, or in the state
        # folder where a server under the hardened unit made them at run time.
        for folder in (paths.state, paths.config):
            for found in (*folder.glob("*.key"), *folder.glob(f"{KEY_DIR}/*.key")):
                files.setdefault(found.relative_to(folder).as_posix(), found)
        bundle = {
            "version": 1,
            "files": {n: base64.b64encode(path.read_bytes()).decode() for n, path in sorted(files.items())},
        }
        text = json.dumps(bundle, indent=2) + "\n"
        if args.output:
            pki.write_private(Path(args.output), text.encode(), 0o600)
            return 0
        if stat.S_ISREG(os.fstat(sys.stdout.fileno()).st_mode):  # `> FILE`: the shell made it 0644
            os.fchmod(sys.stdout.fileno(), 0o600)
        sys.stdout.write(text)
        return 0


class NodeJoin(Command):
    """Make this home a further node of an existing server."""

    words = ("node", "join")
    help = "make this instance home another node of the server on DATABASE (with its secrets)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--database", required=True, metavar="URL", help="the server's PostgreSQL URL")
        parser.add_argument("--secrets", required=True, metavar="FILE", help="from `node secrets`")
        parser.add_argument("--public-url", required=True, help="this node's URL for tentacles and operators")
        parser.add_argument("--listen", metavar="HOST:PORT", help="API address (default 0.0.0.0:8443)")
        parser.add_argument("--polling-listen", metavar="HOST:PORT", help="polling address (default :10943)")
        parser.add_argument("--node", default="", help="this node's name (default: the host name)")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        if (paths.config / cfg.CONFIG_FILE).exists():
            raise UsageError(f"{paths.config} is already initialised")
        try:
            config = ServerConfig(public_url=args.public_url, database=args.database, node=args.node)
            config = with_listen(config, args)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        files = _read_secrets(Path(args.secrets))
        db = Database(config.database_location(paths))
        try:
            if not db.sync(node_rows.holds_server):
                raise UsageError(
                    f"{db.describe()} holds no server: create one with `server-shim init --database`"
                )
            key = db.sync(accounts.create_api_key, f"admin-{config.node_name()}")
        finally:
            db.close()
        paths.create()
        for name, data in files.items():
            target = paths.config / name
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            pki.write_private(target, data, 0o600 if name.endswith(".key") else 0o644)
        pki.write_private(paths.config / cfg.ADMIN_KEY_FILE, key.encode() + b"\n")
        cfg.save(paths, config)
        print(f"joined {db.describe()} as node {config.node_name()}; start it with `server-shim run`")
        return 0


_SECRET_NAME = re.compile(rf"(?:{KEY_DIR}/)?[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,99}}")


def _read_secrets(path: Path) -> dict[str, bytes]:
    try:
        bundle = json.loads(path.read_text())
        files = {str(n): base64.b64decode(v) for n, v in bundle["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a secrets file from `server-shim node secrets`: {exc}") from exc
    missing = [n for n in SECRET_FILES if n not in files]
    if missing or not all(_SECRET_NAME.fullmatch(n) for n in files):
        raise ConfigError(
            f"{path}: a secrets file must hold {', '.join(SECRET_FILES)} and plain names only"
            f" (or {KEY_DIR}/NAME.key)"
        )
    return files


class Migrate(Command):
    """Move a SQLite server's data into an empty PostgreSQL database."""

    words = ("migrate",)
    help = "copy a SQLite server's database into an empty PostgreSQL one (then run on PostgreSQL)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--from", dest="source", required=True, metavar="sqlite:PATH", help="the SQLite file"
        )
        parser.add_argument("--to", dest="target", required=True, metavar="URL", help="a postgresql:// URL")

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        if not args.source.startswith("sqlite:"):
            raise UsageError(f"--from must be sqlite:PATH, not {args.source!r}")
        if not is_postgresql(args.target):
            raise UsageError(f"--to must be a postgresql:// URL, not {args.target!r}")
        source = Path(args.source.removeprefix("sqlite:")).expanduser()
        if not source.is_file():
            raise UsageError(f"--from: {source} does not exist")
        copied = transfer.copy(Database(source), Database(args.target))
        print(f"copied {sum(copied.values())} rows in {len(copied)} tables to the PostgreSQL database")
        config_file = paths.config / cfg.CONFIG_FILE
        if config_file.exists():
            config = cfg.load(paths)
            if not config.database and config.database_location(paths) == source:
                cfg.save(paths, config.with_changes(database=args.target))
                print(f"{config_file}: database = the PostgreSQL URL; restart the server")
        return 0


COMMANDS: list[Command] = [NodeList(), NodeDrain(), NodeSecrets(), NodeJoin(), Migrate()]
