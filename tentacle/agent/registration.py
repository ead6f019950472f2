"""`tentacle register`: trade a token and a CSR for a certificate signed by the server.

Trust on first use, made safe like ``kubeadm join``: the operator passes the server's
thumbprint, and the connection is pinned to it before the token leaves this host.
The answer carries our signed certificate and the server's CA; both are checked
against what we sent before anything is written. It also carries the public half of the
server's plan-signing key (`tentacle.protocol.signing`), pinned in ``tentacle.toml``
beside the server's thumbprint: from then on this tentacle acts only on signed requests.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography import x509

from tentacle.agent import agent_config as config_mod
from tentacle.agent.agent_config import ListenConfig, ServerConfig, TentacleConfig
from tentacle.common.logs import event
from tentacle.common.paths import InstancePaths
from tentacle.errors import TentacleError, TrustError, UsageError
from tentacle.net import httpclient, pki
from tentacle.net.tls import client_context, pinned_connector
from tentacle.protocol import signing
from tentacle.protocol.identity import check_name, normalize_thumbprint

REGISTER_PATH = "/api/machines/register/v1"
log = logging.getLogger("tentacle.agent.registration")


@dataclass(frozen=True)
class Registration:
    """What the operator asked for on the command line."""

    server: str
    token: str
    server_thumbprint: str
    name: str
    environments: tuple[str, ...]
    roles: tuple[str, ...]
    listen: ListenConfig | None  # None: polling
    force: bool = False
    space: str = "Default"
    tenants: tuple[str, ...] = ()
    tenant_tags: tuple[str, ...] = ()
    tenanted_deployment: str | None = None  # untenanted | tenanted | both; None: the server decides
    more_servers: tuple[str, ...] = ()  # other nodes of the same server (--server given again)

    def endpoint(self) -> str | None:
        """The URL the server will use to reach a listening tentacle."""
        if self.listen is None:
            return None
        host = self.listen.public_hostname or self.listen.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{self.listen.port}"


def validate(reg: Registration) -> Registration:
    """Check the flags before any network traffic; raises UsageError."""
    try:
        check_name("machine name", reg.name)
        for value in reg.environments + reg.roles:
            check_name("environment or role", value)
        thumb = normalize_thumbprint(reg.server_thumbprint)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    for url in (reg.server, *reg.more_servers):
        if not url.startswith("https://"):
            raise UsageError(f"--server must be an https:// URL, not {url!r}")
    if not reg.environments or not reg.roles:
        raise UsageError("give at least one --environment and one --role")
    if reg.tenanted_deployment == "untenanted" and (reg.tenants or reg.tenant_tags):
        raise UsageError("--tenant and --tenant-tag need --tenanted-deployment tenanted or both")
    for tag in reg.tenant_tags:
        if tag.count("/") != 1 or tag.startswith("/") or tag.endswith("/"):
            raise UsageError(f"--tenant-tag must be TagSet/Tag (e.g. Region/EU), not {tag!r}")
    return Registration(**{**reg.__dict__, "server_thumbprint": thumb})


def ensure_key(paths: InstancePaths, name: str) -> pki.PrivateKey:
    """The instance's key, made (with a self-signed certificate) on first use."""
    key_path = config_mod.file(paths, config_mod.KEY_FILE)
    if key_path.exists():
        return pki.load_key(key_path)
    key = pki.new_key()
    pki.write_private(key_path, pki.key_pem(key))
    pki.write_private(
        config_mod.file(paths, config_mod.CERT_FILE), pki.cert_pem(pki.self_signed(key, name)), 0o644
    )
    return key


async def register(paths: InstancePaths, reg: Registration) -> TentacleConfig:
    """Register with the server and write the resulting configuration."""
    reg = validate(reg)
    paths.create()
    key = ensure_key(paths, reg.name)
    body = {
        "token": reg.token,
        "csr": pki.build_csr(key, reg.name).decode(),
        "name": reg.name,
        "environments": list(reg.environments),
        "roles": list(reg.roles),
        "mode": "polling" if reg.listen is None else "listening",
        "endpoint": reg.endpoint(),
        "force": reg.force,
        "space": reg.space,
        "tenants": list(reg.tenants),
        "tenantTags": list(reg.tenant_tags),
    }
    if reg.tenanted_deployment is not None:
        body["tenantedDeployment"] = reg.tenanted_deployment
    answer = await _ask_each(reg, body)
    cert, ca = _check_answer(answer, key)
    return _save(paths, reg, cert, ca, answer, _signing_key(answer))


async def _ask_each(reg: Registration, body: Any) -> Any:
    """Register with the first node that answers (the others may be down: any node will do)."""
    urls = (reg.server, *reg.more_servers)
    async with aiohttp.ClientSession(connector=pinned_connector([reg.server_thumbprint])) as session:
        for number, url in enumerate(urls, start=1):
            try:
                return await httpclient.call(
                    session,
                    "POST",
                    url.rstrip("/") + REGISTER_PATH,
                    body=body,
                    ssl_context=client_context(None),
                )
            except TentacleError as exc:
                if not exc.retryable or number == len(urls):
                    raise
                event(log, "register.next_server", logging.WARNING, url=url, reason=exc.message)
    raise AssertionError("unreachable")  # the loop returns or raises


def _check_answer(answer: object, key: pki.PrivateKey) -> tuple[x509.Certificate, x509.Certificate]:
    if not isinstance(answer, dict):
        raise TrustError("the server's registration answer is not an object")
    try:
        cert = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        ca = x509.load_pem_x509_certificate(str(answer["caCertificate"]).encode())
    except (KeyError, ValueError) as exc:
        raise TrustError(f"the server's registration answer has no valid certificate: {exc}") from exc
    if cert.public_key() != key.public_key():
        raise TrustError("the server signed a certificate for another key")
    cert.verify_directly_issued_by(ca)
    return cert, ca


def _signing_key(answer: dict[str, object]) -> str:
    """The server's plan-signing key, checked; "" from a server that does not sign (an older one)."""
    key = answer.get("signingKey")
    if key is None:
        return ""
    try:
        signing.public_raw(str(key))
    except ValueError as exc:
        raise TrustError(f"the server's registration answer has a bad signing key: {exc}") from exc
    return str(key)


def _save(
    paths: InstancePaths,
    reg: Registration,
    cert: x509.Certificate,
    ca: x509.Certificate,
    answer: dict[str, object],
    signing_key: str,
) -> TentacleConfig:
    pki.write_private(config_mod.file(paths, config_mod.CERT_FILE), pki.cert_pem(cert), 0o644)
    pki.write_private(config_mod.file(paths, config_mod.SERVER_CA_FILE), pki.cert_pem(ca), 0o644)
    polling_url = str(answer.get("pollingUrl") or "")
    listed = answer.get("pollingUrls")
    more = tuple(str(u) for u in listed if u != polling_url) if isinstance(listed, list) else ()
    config = TentacleConfig(
        name=reg.name,
        mode="polling" if reg.listen is None else "listening",
        environments=reg.environments,
        roles=reg.roles,
        server=ServerConfig(
            url=reg.server,
            polling_url=polling_url,
            thumbprints=(reg.server_thumbprint,),
            signing_key=signing_key,
            urls=reg.more_servers,
            polling_urls=more,
        ),
        listen=reg.listen or ListenConfig(),
    )
    config_mod.save(paths, config)
    return config
