"""A TLS scan (sslyze) of every port we serve, and the trust refusals through the fault proxy.

The scan covers the server's API port, its polling port and a listening tentacle's port,
each with the client certificate it asks for. What counts as strong, on each port:

- SSL 2.0, SSL 3.0, TLS 1.0 and TLS 1.1: not a single cipher suite accepted.
- TLS 1.2: every accepted suite uses ephemeral ECDH key exchange (forward secrecy) and an
  AEAD cipher (AES-GCM or ChaCha20-Poly1305) with a key of at least 128 bits. That rules
  out RC4, 3DES, NULL, EXPORT and anonymous suites, static RSA or DH key exchange, and
  every CBC-mode suite (MAC-then-encrypt: padding oracles such as Lucky13), SHA-1 or not.
- TLS 1.3: supported, with its standard AEAD suites only.
- No TLS compression (CRIME), secure renegotiation only and no client-initiated
  renegotiation, not vulnerable to Heartbleed.

Trust is end to end: the proxy forwards raw bytes, so every refusal of the foundation
holds through it (a certificate nobody registered, no certificate, another tentacle's
certificate posing as the server, TLS below 1.2, a proxy that leads the server to the
wrong tentacle).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

# sslyze's package re-exports these without __all__; mypy --strict wants their home modules.
from sslyze.plugins.openssl_cipher_suites.implementation import CipherSuitesScanResult
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.scanner.models import ServerScanRequest, ServerScanResult
from sslyze.scanner.scanner import Scanner
from sslyze.server_setting import (
    ClientAuthenticationCredentials,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
)

from rigs.faultproxy import FaultProxy
from server_shim import server_config
from server_shim.dispatch.links import ListeningLink
from tentacle.errors import TrustError
from tentacle.net import pki
from tentacle.net.tls import client_context
from tentacle.protocol.rpc_messages import PING, NoParams
from tests.conftest import LiveServer, Tentacles, eventually, tentacle_files, ws_status

REFUSED = ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites")
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
COMMANDS = {
    ScanCommand.SSL_2_0_CIPHER_SUITES,
    ScanCommand.SSL_3_0_CIPHER_SUITES,
    ScanCommand.TLS_1_0_CIPHER_SUITES,
    ScanCommand.TLS_1_1_CIPHER_SUITES,
    ScanCommand.TLS_1_2_CIPHER_SUITES,
    ScanCommand.TLS_1_3_CIPHER_SUITES,
    ScanCommand.TLS_COMPRESSION,
    ScanCommand.SESSION_RENEGOTIATION,
    ScanCommand.HEARTBLEED,
}


def _request(port: int, credentials: ClientAuthenticationCredentials | None) -> ServerScanRequest:
    network = ServerNetworkConfiguration("127.0.0.1", tls_client_auth_credentials=credentials)
    return ServerScanRequest(ServerNetworkLocation("127.0.0.1", port), network, scan_commands=COMMANDS)


def _scan(requests: dict[str, ServerScanRequest]) -> dict[str, ServerScanResult]:
    """Scan every port at once (blocking: sslyze runs its own threads)."""
    scanner = Scanner()
    scanner.queue_scans(list(requests.values()))
    by_port = {request.server_location.port: name for name, request in requests.items()}
    return {by_port[result.server_location.port]: result for result in scanner.get_results()}


def _suites(result: ServerScanResult, command: str) -> CipherSuitesScanResult:
    assert result.scan_result is not None, result.connectivity_error_trace
    attempt = getattr(result.scan_result, command)
    suites = attempt.result
    assert isinstance(suites, CipherSuitesScanResult), (command, attempt.error_reason, attempt.error_trace)
    return suites


def _weak_tls12(result: ServerScanResult) -> list[str]:
    """The accepted TLS 1.2 suites that miss ECDHE, AEAD or 128-bit keys."""
    weak = []
    for accepted in _suites(result, "tls_1_2_cipher_suites").accepted_cipher_suites:
        suite = accepted.cipher_suite
        aead = "_GCM_" in suite.name or "CHACHA20_POLY1305" in suite.name
        if not (suite.name.startswith("TLS_ECDHE_") and aead and suite.key_size >= 128):
            weak.append(suite.name)
    return weak


def _problems(result: ServerScanResult) -> list[str]:
    """Everything on one port that breaks the criteria of the module docstring."""
    problems = [f"{c}: accepts {len(_suites(result, c).accepted_cipher_suites)} suites" for c in REFUSED]
    problems = [
        p for p, c in zip(problems, REFUSED, strict=True) if _suites(result, c).accepted_cipher_suites
    ]
    problems += [f"weak TLS 1.2 suite {name}" for name in _weak_tls12(result)]
    if not _suites(result, "tls_1_2_cipher_suites").accepted_cipher_suites:
        problems.append("TLS 1.2 not supported")
    tls13 = {s.cipher_suite.name for s in _suites(result, "tls_1_3_cipher_suites").accepted_cipher_suites}
    if not tls13 or not tls13 <= TLS13_SUITES:
        problems.append(f"TLS 1.3 suites: {sorted(tls13)}")
    assert result.scan_result is not None
    scan = result.scan_result
    if scan.tls_compression.result is None or scan.tls_compression.result.supports_compression:
        problems.append("TLS compression")
    renegotiation = scan.session_renegotiation.result
    if renegotiation is None or not renegotiation.supports_secure_renegotiation:
        problems.append("no secure renegotiation")
    elif renegotiation.is_vulnerable_to_client_renegotiation_dos:
        problems.append("client-initiated renegotiation")
    if scan.heartbleed.result is None or scan.heartbleed.result.is_vulnerable_to_heartbleed:
        problems.append("heartbleed")
    return problems


async def test_every_port_offers_only_tls_1_2_and_up_with_strong_suites(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """sslyze on the API, polling and listening tentacle ports: old protocols refused, no weak suite."""
    paths = await tentacles.register("web-01", "listening")
    agent = await tentacles.start("web-01")
    assert agent.bound_port is not None
    cert, key, _ = tentacle_files(paths)
    conf = live_server.paths.config
    as_tentacle = ClientAuthenticationCredentials(cert, key)
    as_server = ClientAuthenticationCredentials(
        conf / server_config.SERVER_CERT, conf / server_config.SERVER_KEY
    )
    requests = {
        "api": _request(live_server.server.bound.api, None),  # client certificates are optional there
        "polling": _request(live_server.server.bound.polling, as_tentacle),
        "listening tentacle": _request(agent.bound_port, as_server),
    }
    results = await asyncio.to_thread(_scan, requests)
    assert set(results) == set(requests)
    assert {name: _problems(result) for name, result in results.items()} == {name: [] for name in requests}


# --- the refusals, through the fault proxy ------------------------------------------------------


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    """A fault proxy without a target yet (each test points it)."""
    async with FaultProxy("127.0.0.1", 9) as running:
        yield running


def _old_tls_client() -> ssl.SSLContext:
    """A client that offers nothing newer than TLS 1.1 (the server must say no)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version, ctx.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    return ctx


async def _handshake(port: int, ctx: ssl.SSLContext) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
async def test_polling_port_refusals_hold_through_the_proxy(
    live_server: LiveServer, tentacles: Tentacles, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Through the proxy: an unregistered certificate gets 403 naming it; none, or TLS 1.1, no handshake."""
    proxy.retarget("127.0.0.1", live_server.server.bound.polling)
    url = f"wss://127.0.0.1:{proxy.port}/poll/v1"
    ca = live_server.paths.config / server_config.CA_CERT
    stranger = live_server.ca_signed(tmp_path, "stranger")
    assert await ws_status(url, client_context(ca, stranger.cert, stranger.key)) == 403
    with pytest.raises(aiohttp.ClientError):
        await ws_status(url, client_context(ca))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(proxy.port, _old_tls_client())
    cert, key, _ = tentacle_files(await tentacles.register("web-01", "polling"))
    assert await ws_status(url, client_context(ca, cert, key)) == 101  # the proxy itself lets trust through


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
async def test_listening_tentacle_refusals_hold_through_the_proxy(
    live_server: LiveServer, tentacles: Tentacles, proxy: FaultProxy
) -> None:
    """Through the proxy: another tentacle posing as the server gets 403; TLS 1.1 gets no handshake."""
    listener = await tentacles.register("web-01", "listening")
    impostor = await tentacles.register("web-02", "polling")
    agent = await tentacles.start("web-01")
    assert agent.bound_port is not None
    proxy.retarget("127.0.0.1", agent.bound_port)
    cert, key, ca = tentacle_files(impostor)
    web01 = pki.cert_thumbprint(pki.load_cert(tentacle_files(listener)[0]))
    link = ListeningLink(f"https://127.0.0.1:{proxy.port}", web01, client_context(ca, cert, key))
    try:
        with pytest.raises(Exception, match="403"):
            await link.call(PING, NoParams(), 5)
    finally:
        await link.close()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(proxy.port, _old_tls_client())


async def test_server_refuses_another_tentacle_behind_the_endpoint(
    live_server: LiveServer, tentacles: Tentacles, proxy: FaultProxy
) -> None:
    """A proxy leading the server to the wrong tentacle is caught by the pin; pointed right, all is well."""
    await tentacles.register("web-02", "listening")
    other = await tentacles.start("web-02")
    assert other.bound_port is not None
    proxy.retarget("127.0.0.1", other.bound_port)
    files = live_server.server.files
    ctx = client_context(
        files[server_config.CA_CERT], files[server_config.SERVER_CERT], files[server_config.SERVER_KEY]
    )
    paths = await tentacles.register("web-01", "listening")
    web01 = pki.cert_thumbprint(pki.load_cert(tentacle_files(paths)[0]))
    link = ListeningLink(f"https://127.0.0.1:{proxy.port}", web01, ctx)
    try:
        with pytest.raises(TrustError, match=f"expected thumbprint {web01}"):
            await link.call(PING, NoParams(), 5)
        agent = await tentacles.start("web-01")
        assert agent.bound_port is not None
        proxy.retarget("127.0.0.1", agent.bound_port)
        proxy.reset()
        assert (await link.call(PING, NoParams(), 5)).name == "web-01"
    finally:
        await link.close()
    await eventually(lambda: live_server.online("web-01"), 10)
