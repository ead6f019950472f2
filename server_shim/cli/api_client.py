"""The API client behind the operator commands: one command, one request.

Where the server is, which key to send and how to know the server, from the first source
that says (`ClientFlags` are the command line's ``--server``, ``--api-key``,
``--server-thumbprint``, ``--ca``)::

    flags  >  an instance home given with --home / $SERVER_SHIM_HOME
           >  the user's login (`server-shim login`: ~/.config/server-shim/login.toml)
           >  the default instance home (on the server's own host)

How the server is recognised, strongest first; the API key is sent only after the check:

- a thumbprint (``--server-thumbprint``, the login's, or the home's own ``server.pem``):
  the server's exact certificate, checked before a byte of the request is sent;
- ``--ca FILE`` alone: a certificate signed by that CA **and** naming the URL's host in
  its subjectAltName (never its common name). Every tentacle's certificate is signed by
  the server's CA too, but carries no subjectAltName, so none of them passes;
- nothing at all: the system's trust store and the host name, like any HTTPS client.

Plain ``http://`` is refused: the API key would cross the network in clear.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from server_shim import server_config as cfg
from server_shim.cli import login_file
from tentacle.common.paths import InstancePaths
from tentacle.errors import ConfigError, UsageError
from tentacle.net import httpclient, pki
from tentacle.net.tls import client_context, pinned_connector
from tentacle.protocol.identity import normalize_thumbprint

API_KEY_VARIABLE = "SERVER_SHIM_API_KEY"


@dataclass(frozen=True)
class ClientFlags:
    """What the command line said (None: not given), and whether a home was named."""

    server: str | None = None
    api_key: str | None = None
    ca: str | None = None
    thumbprint: str | None = None
    space: str = "Default"
    home_given: bool = False


@dataclass(frozen=True)
class ApiClient:
    """Where the server is, how to prove who we are, and how to recognise the server."""

    server: str
    api_key: str
    ca: Path | None
    space: str = "Default"
    pin: str | None = None  # the server certificate's thumbprint
    check_host: bool = False  # the CA alone: the certificate must name the URL's host

    @classmethod
    def from_flags(
        cls, paths: InstancePaths, flags: ClientFlags, env: dict[str, str] | None = None
    ) -> ApiClient:
        """The client the flags describe, completed from a home or the user's login."""
        env = dict(os.environ) if env is None else env
        login = None if flags.home_given else login_file.load(login_file.path(env))
        key: str | None
        pin: str | None
        ca: Path | None
        if login is not None:
            server, key, pin, ca = login.url, login.api_key, login.thumbprint, None
        else:
            server, key, pin, ca = _from_home(paths, flags)
        server = check_url(flags.server or server, "--server" if flags.server else "the server URL")
        api_key = flags.api_key or env.get(API_KEY_VARIABLE) or key
        if not api_key:
            raise ConfigError(
                f"no API key: pass --api-key KEY (or set ${API_KEY_VARIABLE}), or `server-shim login URL`"
            )
        if flags.thumbprint is not None:
            return cls(server, api_key, None, flags.space, pin=_thumbprint(flags.thumbprint))
        if flags.ca is not None:
            return cls(server, api_key, Path(flags.ca), flags.space, check_host=True)
        return cls(server, api_key, ca, flags.space, pin=pin)

    @classmethod
    def from_home(
        cls,
        paths: InstancePaths,
        server: str | None,
        api_key: str | None,
        ca: str | None,
        space: str = "Default",
    ) -> ApiClient:
        """The client of an instance home (``home_given``), with these flags."""
        flags = ClientFlags(server=server, api_key=api_key, ca=ca, space=space, home_given=True)
        return cls.from_flags(paths, flags)

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context that recognises the server (the pin, when there is one, comes on top)."""
        if self.check_host:
            assert self.ca is not None, "check_host comes with --ca"
            ctx = client_context(self.ca)
            ctx.hostname_checks_common_name = False  # a tentacle's certificate has its name as CN
            ctx.check_hostname = True
            return ctx
        if self.pin is not None:
            return client_context(self.ca)  # no CA: the pin alone decides, as at registration
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
                ssl_context=self.ssl_context(),
            )


def _from_home(paths: InstancePaths, flags: ClientFlags) -> tuple[str, str | None, str | None, Path | None]:
    """(URL, admin key, pinned thumbprint, CA) of an instance home, as far as it has them."""
    server = ""
    if flags.server is None:
        if not (paths.config / cfg.CONFIG_FILE).exists() and not flags.home_given:
            raise ConfigError(
                "no server to talk to: pass --server URL with --server-thumbprint T (or --ca FILE),"
                " or save them once with `server-shim login URL --server-thumbprint T --api-key K`"
            )
        server = cfg.load(paths).public_url
    key_file = paths.config / cfg.ADMIN_KEY_FILE
    key = key_file.read_text().strip() if key_file.exists() else None
    if key is None and flags.api_key is None and flags.server is None:
        raise ConfigError(f"{key_file}: missing; pass --api-key KEY (and --server URL)")
    home_ca, home_cert = paths.config / cfg.CA_CERT, paths.config / cfg.SERVER_CERT
    pin = pki.cert_thumbprint(pki.load_cert(home_cert)) if home_cert.exists() else None
    return server, key, pin, home_ca if home_ca.exists() else None


def check_url(url: str, what: str) -> str:
    """An https:// URL without its trailing slash; UsageError for http:// and anything else."""
    parts = urlsplit(url)
    if parts.scheme == "http":
        raise UsageError(
            f"{what} {url!r}: plain http would send the API key in clear; use https://"
            " (the server serves only TLS)"
        )
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"{what} must be an https:// URL, not {url!r}")
    return url.rstrip("/")


def _thumbprint(text: str) -> str:
    try:
        return normalize_thumbprint(text)
    except ValueError as exc:
        raise UsageError(f"--server-thumbprint: {exc}") from exc
