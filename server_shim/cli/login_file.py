"""The operator's saved login: which server, its thumbprint, and the API key.

``server-shim login URL --server-thumbprint T --api-key K`` writes it to
``$XDG_CONFIG_HOME/server-shim/login.toml`` (``~/.config/...``; ``$SERVER_SHIM_LOGIN``
names another file), mode 0600 in a 0700 folder, and every API command run without a
home uses it::

    url = "https://deploy.example:8443"
    server_thumbprint = "3f2a..."      # the server's certificate, pinned
    api_key = "API-..."

A file that others can read is refused (like ssh's keys): it holds an API key.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tentacle.common import configfile
from tentacle.common.atomicfile import write_private
from tentacle.errors import ConfigError
from tentacle.protocol.identity import normalize_thumbprint

FILE_NAME = "login.toml"
PATH_VARIABLE = "SERVER_SHIM_LOGIN"


@dataclass(frozen=True)
class Login:
    """A saved login."""

    url: str
    server_thumbprint: str
    api_key: str

    def __post_init__(self) -> None:
        if not self.url.startswith("https://"):
            raise ValueError(f"url: must be an https:// URL, not {self.url!r}")
        try:
            normalize_thumbprint(self.server_thumbprint)
        except ValueError as exc:
            raise ValueError(f"server_thumbprint: {exc}") from exc
        if not self.api_key:
            raise ValueError("api_key: missing")

    @property
    def thumbprint(self) -> str:
        """The pinned thumbprint, normalized."""
        return normalize_thumbprint(self.server_thumbprint)


def path(env: Mapping[str, str]) -> Path:
    """Where the login lives for this user."""
    if env.get(PATH_VARIABLE):
        return Path(env[PATH_VARIABLE])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "server-shim" / FILE_NAME


def load(where: Path) -> Login | None:
    """The login saved at ``where``, or None when there is none; ConfigError naming a bad one."""
    try:
        mode = where.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{where}: readable by others (mode {oct(mode & 0o777)}); it holds an API key: chmod 600 it"
        )
    data = configfile.read(where)
    try:
        return configfile.load(Login, data, {}, "SERVER_SHIM_LOGIN")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from exc


def save(where: Path, login: Login) -> None:
    """Write the login, 0600, its folder 0700."""
    where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(where, configfile.dump(login).encode(), 0o600)
