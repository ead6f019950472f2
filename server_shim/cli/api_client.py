"""The API client behind the operator commands: one command, one request.

It finds the server and the key in the instance home (``public_url`` and the admin
key written by `init`), unless ``--server`` and ``--api-key`` say otherwise, and
trusts the instance's CA (or ``--ca FILE``; else the system's trust store). On the
server's own host it also pins the server's certificate: every tentacle's certificate
comes from the same CA, and a tentacle posing as the server must not get the API key.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from server_shim import server_config as cfg
from tentacle.common.paths import InstancePaths
from tentacle.errors import ConfigError
from tentacle.net import httpclient, pki
from tentacle.net.tls import client_context, pinned_connector


@dataclass(frozen=True)
class ApiClient:
    """Where the server is and how to prove who we are."""

    server: str
    api_key: str
    ca: Path | None
    space: str = "Default"
    pin: str | None = None  # the server certificate's thumbprint, when the home has it

    @classmethod
    def from_home(
        cls,
        paths: InstancePaths,
        server: str | None,
        api_key: str | None,
        ca: str | None,
        space: str = "Default",
    ) -> ApiClient:
        """Fill what the flags leave out from the instance home."""
        if server is None:
            server = cfg.load(paths).public_url
        if api_key is None:
            key_file = paths.config / cfg.ADMIN_KEY_FILE
            if not key_file.exists():
                raise ConfigError(f"{key_file}: missing; pass --api-key KEY (and --server URL)")
            api_key = key_file.read_text().strip()
        home_ca, home_cert = paths.config / cfg.CA_CERT, paths.config / cfg.SERVER_CERT
        ca_path = Path(ca) if ca else (home_ca if home_ca.exists() else None)
        pin = None
        if ca is None and home_cert.exists():
            pin = pki.cert_thumbprint(pki.load_cert(home_cert))
        return cls(server.rstrip("/"), api_key, ca_path, space=space, pin=pin)

    def _ssl(self) -> ssl.SSLContext:
        if self.ca is None:
            return ssl.create_default_context()
        return client_context(self.ca)

    def path(self, *parts: str) -> str:
        """``/api/{space}/...`` with every part URL-quoted."""
        return "/api/" + "/".join(quote(p, safe="") for p in (self.space, *parts))

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Exactly one HTTP request; returns the decoded answer."""
        connector = pinned_connector([self.pin]) if self.pin else None
        async with aiohttp.ClientSession(connector=connector) as session:
            return await httpclient.call(
                session,
                method,
                self.server + path,
                body=body,
                headers={"X-Api-Key": self.api_key},
                ssl_context=self._ssl(),
            )
