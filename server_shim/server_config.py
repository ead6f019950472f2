"""The server's configuration: ``server-shim.toml`` in the instance's config folder.

    public_url = "https://deploy.example:8443"     # what tentacles and operators use
    database = "postgresql://deploy@db.example/deploy"  # empty (the default): SQLite, state/server.db
    node = "node-a"                                 # this node's name (default: the host name)
    [listen]   host = "0.0.0.0"  port = 8443       # API and built-in feed
    [polling]  host = "0.0.0.0"  port = 10943      # polling tentacles' websockets
    [checks]   interval = 5.0    timeout = 5.0     # how often listening tentacles are pinged
    [tasks]    target_lost_after = 120.0           # a target unreachable this long fails its task
               cancel_timeout = 10.0               # a cancel not confirmed by then ends the task anyway
               log_limit_bytes = 67108864          # log text kept per target (64 MiB); later lines counted
    [feed]     max_package_bytes = 17179869184     # the largest package the feed takes (16 GiB)
    [connections]                                  # slow or greedy clients (server_shim.api.slow_clients)
    handshake_timeout = 30.0   header_timeout = 30.0   body_timeout = 30.0   body_min_rate = 1024
    per_address = 512          polling_per_address = 10000

``SERVER_SHIM_*`` variables override the file; `run --listen/--polling-listen` override both.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from server_shim.store.database import is_postgresql
from tentacle.common import configfile
from tentacle.common.paths import InstancePaths
from tentacle.errors import ConfigError
from tentacle.net.pki import write_private

CONFIG_FILE = "server-shim.toml"
DATABASE_FILE = "server.db"
CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
ADMIN_KEY_FILE = "admin-api-key"
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Endpoint:
    """A host and port to bind."""

    host: str = "0.0.0.0"
    port: int = 8443

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be 0-65535, not {self.port}")


@dataclass(frozen=True)
class Checks:
    """Health checks of listening tentacles (seconds)."""

    interval: float = 5.0
    timeout: float = 5.0


@dataclass(frozen=True)
class Tasks:
    """How tasks treat unreachable targets and cancels (seconds), and how much log they keep."""

    target_lost_after: float = 120.0
    cancel_timeout: float = 10.0
    log_limit_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.target_lost_after <= 86400:
            raise ValueError(
                f"tasks.target_lost_after: must be 1-86400 seconds, not {self.target_lost_after}"
            )
        if not 0.1 <= self.cancel_timeout <= 3600:
            raise ValueError(f"tasks.cancel_timeout: must be 0.1-3600 seconds, not {self.cancel_timeout}")
        if not 1024 <= self.log_limit_bytes <= 2**40:
            raise ValueError(
                f"tasks.log_limit_bytes: must be 1024 to 2**40 bytes, not {self.log_limit_bytes}"
            )


@dataclass(frozen=True)
class Feed:
    """The built-in feed."""

    max_package_bytes: int = 16 * 1024**3

    def __post_init__(self) -> None:
        if self.max_package_bytes < 1:
            raise ValueError(f"feed.max_package_bytes: must be at least 1, not {self.max_package_bytes}")


@dataclass(frozen=True)
class Events:
    """How long events and finished deliveries are kept (days; 0 keeps them forever)."""

    keep_days: float = 90.0

    def __post_init__(self) -> None:
        if not 0 <= self.keep_days <= 36500:
            raise ValueError(f"events.keep_days: must be 0-36500 days (0: forever), not {self.keep_days}")


@dataclass(frozen=True)
class Connections:
    """Deadlines (seconds) and bounds for every client connection; see `server_shim.api.slow_clients`.

    ``header_timeout`` also ends idle keep-alive connections. ``polling_per_address`` is
    high because a whole fleet of polling tentacles behind one NAT shares an address.
    """

    handshake_timeout: float = 30.0
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    body_min_rate: int = 1024
    per_address: int = 512
    polling_per_address: int = 10000

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "header_timeout", "body_timeout"):
            value = getattr(self, name)
            if not 0.1 <= value <= 3600:
                raise ValueError(f"connections.{name}: must be 0.1-3600 seconds, not {value}")
        if not 0 <= self.body_min_rate <= 1024**3:
            raise ValueError(
                f"connections.body_min_rate: must be 0-{1024**3} bytes/s, not {self.body_min_rate}"
            )
        for name in ("per_address", "polling_per_address"):
            value = getattr(self, name)
            if not 1 <= value <= 1_000_000:
                raise ValueError(f"connections.{name}: must be 1-1000000, not {value}")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `server-shim run` needs, validated."""

    public_url: str = "https://127.0.0.1:8443"
    polling_public_url: str = ""
    database: str = ""
    node: str = ""
    log_level: str = "info"
    listen: Endpoint = field(default_factory=Endpoint)
    polling: Endpoint = field(default_factory=lambda: Endpoint(port=10943))
    checks: Checks = field(default_factory=Checks)
    tasks: Tasks = field(default_factory=Tasks)
    feed: Feed = field(default_factory=Feed)
    events: Events = field(default_factory=Events)
    connections: Connections = field(default_factory=Connections)

    def __post_init__(self) -> None:
        url = urlsplit(self.public_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"public_url: must be an https:// URL, not {self.public_url!r}")
        if self.database and not is_postgresql(self.database):
            raise ValueError(
                "database: must be a postgresql://USER@HOST/DB URL (or empty for SQLite),"
                f" not {self.database!r}"
            )
        if self.node and not NODE_NAME.fullmatch(self.node):
            raise ValueError(f"node: 1-64 letters, digits, '.', '_' or '-', not {self.node!r}")

    def database_location(self, paths: InstancePaths) -> Path | str:
        """The PostgreSQL URL, or the SQLite file in the instance's state folder."""
        return self.database or paths.state / DATABASE_FILE

    def node_name(self) -> str:
        """This node's name: the configured one, else the host's name."""
        return self.node or socket.gethostname()[:64] or "node"

    def polling_url(self) -> str:
        """Where polling tentacles connect."""
        if self.polling_public_url:
            return self.polling_public_url
        host = urlsplit(self.public_url).hostname or "localhost"
        host = f"[{host}]" if ":" in host else host
        return f"wss://{host}:{self.polling.port}/poll/v1"

    def with_changes(self, **changes: object) -> ServerConfig:
        """A copy with some fields replaced."""
        return replace(self, **changes)  # type: ignore[arg-type]


def load(paths: InstancePaths, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Read and validate ``server-shim.toml`` with ``SERVER_SHIM_*`` overrides."""
    path = paths.config / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path}: missing; run `server-shim init` first")
    data = configfile.read(path)
    try:
        return configfile.load(ServerConfig, data, os.environ if env is None else env, "SERVER_SHIM")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


def save(paths: InstancePaths, config: ServerConfig) -> None:
    """Write ``server-shim.toml`` atomically."""
    write_private(paths.config / CONFIG_FILE, configfile.dump(config).encode(), 0o640)
