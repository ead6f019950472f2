"""The tentacle's configuration: ``tentacle.toml`` in the instance's config folder.

    name = "web-01"
    mode = "listening"              # or "polling"
    environments = ["Production"]
    roles = ["web"]

    [server]
    url = "https://deploy.example:8443"
    polling_url = "wss://deploy.example:10943/poll/v1"
    thumbprints = ["3f2a..."]       # pinned: only these certificates are the server
    signing_key = "ed25519:..."     # pinned at registration: task requests must be signed by it
                                    # (a rotation's successor is kept in <state>/signing-key.json)

    [listen]
    host = "0.0.0.0"
    port = 10933                    # 0: a free port at each start, which the server is told

    [tasks]
    stop_grace = 45                 # seconds a running step gets when the agent stops
    log_limit_bytes = 67108864        # one task's log on disk (64 MiB); output beyond is counted, not kept

    [packages]
    parallelism = 4                 # packages acquired at once
    min_free_share = 0.2            # evict cached packages below this share of free space
    mirrors = { "nuget-mirrors" = ["https://mirror.near.me/v3/index.json"] }   # preferred, per feed

Loaded once into frozen dataclasses (`tentacle.common.configfile`); ``TENTACLE_*`` variables
override the file (``TENTACLE_LISTEN_PORT``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tentacle.common import configfile
from tentacle.common.atomicfile import write_private
from tentacle.common.paths import InstancePaths
from tentacle.errors import ConfigError
from tentacle.protocol import signing
from tentacle.protocol.identity import check_name, normalize_thumbprint

CONFIG_FILE = "tentacle.toml"
KEY_FILE = "tentacle.key"
CERT_FILE = "tentacle.crt"
SERVER_CA_FILE = "server-ca.pem"


@dataclass(frozen=True)
class ServerConfig:
    """How to reach and recognise the server."""

    url: str = ""
    polling_url: str = ""
    thumbprints: tuple[str, ...] = ()
    signing_key: str = ""  # empty: registered before signed requests, none pinned yet
    urls: tuple[str, ...] = ()  # the other nodes' API URLs (register --server URL --server URL2)
    polling_urls: tuple[str, ...] = ()  # the other nodes' polling URLs: one websocket to each

    def every_polling_url(self) -> tuple[str, ...]:
        """Where a polling tentacle keeps a websocket: its first server, then every other node."""
        return tuple(dict.fromkeys(u for u in (self.polling_url, *self.polling_urls) if u))

    def __post_init__(self) -> None:
        for i, value in enumerate(self.thumbprints):
            try:
                normalize_thumbprint(value)
            except ValueError as exc:
                raise ValueError(f"server.thumbprints[{i}]: {exc}") from exc
        if self.signing_key:
            try:
                signing.public_raw(self.signing_key)
            except ValueError as exc:
                raise ValueError(f"server.signing_key: {exc}") from exc


@dataclass(frozen=True)
class ListenConfig:
    """Where a listening tentacle accepts the server's connections."""

    host: str = "0.0.0.0"
    port: int = 10933  # 0: a free port at each start, reported to the server (daemon.PortReporter)
    public_hostname: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"listen.port: must be 0-65535, not {self.port}")


@dataclass(frozen=True)
class HeartbeatConfig:
    """How often the polling connection proves it is alive (seconds)."""

    interval: float = 20.0

    def __post_init__(self) -> None:
        if not 1 <= self.interval <= 300:
            raise ValueError(f"heartbeat.interval: must be 1-300 seconds, not {self.interval}")


@dataclass(frozen=True)
class TasksConfig:
    """How the agent treats running steps when it stops (seconds), and how much log a task keeps (bytes)."""

    stop_grace: float = 45.0
    log_limit_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 <= self.stop_grace <= 3600:
            raise ValueError(f"tasks.stop_grace: must be 0-3600 seconds, not {self.stop_grace}")
        if not 64 * 1024 <= self.log_limit_bytes <= 2**40:
            raise ValueError(
                f"tasks.log_limit_bytes: must be 65536 (64 KiB) to 2**40 bytes, not {self.log_limit_bytes}"
            )


@dataclass(frozen=True)
class PackagesConfig:
    """How packages are acquired and kept."""

    parallelism: int = 4
    min_free_share: float = 0.2
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.parallelism <= 64:
            raise ValueError(f"packages.parallelism: must be 1-64, not {self.parallelism}")
        if not 0 <= self.min_free_share < 1:
            raise ValueError(f"packages.min_free_share: must be in [0, 1), not {self.min_free_share}")
        for feed, urls in self.mirrors.items():
            for i, url in enumerate(urls):
                if not url.startswith("https://"):
                    raise ValueError(f"packages.mirrors.{feed}[{i}]: must be an https:// URL, not {url!r}")


@dataclass(frozen=True)
class TentacleConfig:
    """Everything `tentacle run` needs, validated."""

    name: str = ""
    mode: str = ""
    environments: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    log_level: str = "info"
    server: ServerConfig = field(default_factory=ServerConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    packages: PackagesConfig = field(default_factory=PackagesConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("", "listening", "polling"):
            raise ValueError(f"mode: must be 'listening' or 'polling', not {self.mode!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level: must be debug, info, warning or error, not {self.log_level!r}")
        for key in ("environments", "roles"):
            for i, value in enumerate(getattr(self, key)):
                try:
                    check_name(key[:-1], value)
                except ValueError as exc:
                    raise ValueError(f"{key}[{i}]: {exc}") from exc

    @property
    def registered(self) -> bool:
        """Whether `register` has completed."""
        return bool(self.name and self.mode and self.server.thumbprints)

    def require_registered(self, paths: InstancePaths) -> TentacleConfig:
        """Self, or a ConfigError saying how to register."""
        if not self.registered:
            raise ConfigError(
                f"{paths.config / CONFIG_FILE}: this tentacle is not registered;"
                " run `tentacle register --server URL --token T --server-thumbprint SHA256 ...`"
            )
        return self

    def with_changes(self, **changes: object) -> TentacleConfig:
        """A copy with some fields replaced."""
        return replace(self, **changes)  # type: ignore[arg-type]


def load(paths: InstancePaths, env: Mapping[str, str] | None = None) -> TentacleConfig:
    """Read and validate ``tentacle.toml`` with ``TENTACLE_*`` overrides."""
    path = paths.config / CONFIG_FILE
    data = configfile.read(path)
    try:
        return configfile.load(TentacleConfig, data, os.environ if env is None else env, "TENTACLE")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


def save(paths: InstancePaths, config: TentacleConfig) -> None:
    """Write ``tentacle.toml`` atomically."""
    text = "# Written by `tentacle register`; edit with care, then `systemctl reload`.\n"
    write_private(paths.config / CONFIG_FILE, (text + configfile.dump(config)).encode(), 0o640)


def file(paths: InstancePaths, name: str) -> Path:
    """A file in the config folder (key, certificate, server CA)."""
    return paths.config / name
