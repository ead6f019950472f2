"""The API client behind the operator commands: one command, one request.

It finds the server and the key in the instance home (``public_url`` and the admin
key written by `init`), unless ``--server`` and ``--api-key`` say otherwise, and
trusts the instance's CA (or ``--ca FILE``; else the system's trust store).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from server_shim import config as cfg
from tentacle import httpclient
from tentacle.errors import ConfigError
from tentacle.paths import InstancePaths
from tentacle.tls import client_context


@dataclass(frozen=True)
class ApiClient:
    """Where the server is and how to prove who we are."""

    server: str
    api_key: str
    ca: Path | None
    space: str = "Default"

    @classmethod
    def from_home(
        cls, paths: InstancePaths, server: str | None, api_key: str | None, ca: str | None
    ) -> ApiClient:
        """Fill what the flags leave out from the instance home."""
        if server is None:
            server = cfg.load(paths).public_url
        if api_key is None:
            key_file = paths.config / cfg.ADMIN_KEY_FILE
            if not key_file.exists():
                raise ConfigError(f"{key_file}: missing; pass --api-key KEY (and --server URL)")
            api_key = key_file.read_text().strip()
        home_ca = paths.config / cfg.CA_CERT
        ca_path = Path(ca) if ca else (home_ca if home_ca.exists() else None)
        return cls(server.rstrip("/"), api_key, ca_path)

    def _ssl(self) -> ssl.SSLContext:
        if self.ca is None:
            return ssl.create_default_context()
        return client_context(self.ca)

    def path(self, *parts: str) -> str:
        """``/api/{space}/...`` with every part URL-quoted."""
        return "/api/" + "/".join(quote(p, safe="") for p in (self.space, *parts))

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Exactly one HTTP request; returns the decoded answer."""
        async with aiohttp.ClientSession() as session:
            return await httpclient.call(
                session,
                method,
                self.server + path,
                body=body,
                headers={"X-Api-Key": self.api_key},
                ssl_context=self._ssl(),
            )
