"""Every refusal of the trust model, each shown on real TLS connections."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest

from server_shim import server_config
from server_shim.dispatch.links import ListeningLink
from server_shim.store import accounts
from tentacle.agent import registration
from tentacle.common.paths import InstancePaths
from tentacle.errors import RemoteError, TrustError
from tentacle.net import pki
from tentacle.net.tls import client_context
from tentacle.protocol.rpc_messages import PING, NoParams
from tests.conftest import LiveServer, Tentacles, eventually, tentacle_files, ws_status


def _polling_url(live: LiveServer) -> str:
    return f"wss://127.0.0.1:{live.server.bound.polling}/poll/v1"


async def test_polling_port_refuses_a_client_without_certificate(live_server: LiveServer) -> None:
    """The polling endpoint's TLS handshake fails when no client certificate is sent."""
    ctx = client_context(live_server.paths.config / server_config.CA_CERT)
    with pytest.raises(aiohttp.ClientError):
        await ws_status(_polling_url(live_server), ctx)


async def test_polling_port_refuses_a_self_signed_certificate(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """A certificate never signed by our CA fails the handshake."""
    key = pki.new_key()
    pki.write_private(tmp_path / "k", pki.key_pem(key))
    pki.write_private(tmp_path / "c", pki.cert_pem(pki.self_signed(key, "rogue")))
    ctx = client_context(live_server.paths.config / server_config.CA_CERT, tmp_path / "c", tmp_path / "k")
    with pytest.raises(aiohttp.ClientError):
        await ws_status(_polling_url(live_server), ctx)


async def test_polling_port_refuses_an_unregistered_certificate_naming_it(
    live_server: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A CA-signed certificate that no machine holds gets 403, and the log names its thumbprint."""
    stranger = live_server.ca_signed(tmp_path, "stranger")
    ctx = client_context(live_server.paths.config / server_config.CA_CERT, stranger.cert, stranger.key)
    with caplog.at_level(logging.WARNING):
        assert await ws_status(_polling_url(live_server), ctx) == 403
    assert any(
        "trust.refused" in r.getMessage() and stranger.thumbprint in r.getMessage() for r in caplog.records
    )


async def test_removed_machine_is_dropped_and_refused(live_server: LiveServer, tentacles: Tentacles) -> None:
    """Removing a machine revokes its certificate: its connection drops and it cannot come back."""
    paths = await tentacles.register("web-01", "polling")
    await tentacles.start("web-01")
    fleet = live_server.server.fleet
    await eventually(lambda: fleet.is_online("web-01"), 10)
    status, body = await live_server.api("DELETE", "/api/Default/machines/web-01/v1")
    assert status == 200, body
    assert not fleet.is_online("web-01")
    assert "web-01" not in await live_server.machines()
    cert, key, ca = tentacle_files(paths)
    assert await ws_status(_polling_url(live_server), client_context(ca, cert, key)) == 403


async def test_listening_tentacle_refuses_another_tentacle_posing_as_server(
    live_server: LiveServer, tentacles: Tentacles, caplog: pytest.LogCaptureFixture
) -> None:
    """A certificate from the same CA but not the pinned server's is refused, naming both thumbprints."""
    listener = await tentacles.register("web-01", "listening")
    impostor = await tentacles.register("web-02", "polling")
    agent = await tentacles.start("web-01")
    await eventually(lambda: live_server.online("web-01"), 10)
    cert, key, ca = tentacle_files(impostor)
    impostor_thumb = pki.cert_thumbprint(pki.load_cert(cert))
    web01 = pki.cert_thumbprint(pki.load_cert(tentacle_files(listener)[0]))
    link = ListeningLink(f"https://127.0.0.1:{agent.bound_port}", web01, client_context(ca, cert, key))
    with caplog.at_level(logging.WARNING), pytest.raises(Exception, match="403"):
        await link.call(PING, NoParams(), 5)
    await link.close()
    refusal = [r.getMessage() for r in caplog.records if "trust.refused" in r.getMessage()]
    assert refusal and impostor_thumb in refusal[0] and live_server.thumbprint in refusal[0]


async def test_listening_tentacle_refuses_a_client_without_certificate(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """The listening port's handshake fails without a client certificate."""
    paths = await tentacles.register("web-01", "listening")
    agent = await tentacles.start("web-01")
    ctx = client_context(tentacle_files(paths)[2])
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.post(f"https://127.0.0.1:{agent.bound_port}/rpc/v1", data=b"{}", ssl=ctx)


async def test_server_refuses_a_listening_endpoint_with_the_wrong_certificate(
    live_server: LiveServer, tentacles: Tentacles
) -> None:
    """The server pins each listening tentacle: another certificate there is a TrustError naming both."""
    await tentacles.register("web-01", "listening")
    agent = await tentacles.start("web-01")
    files = live_server.server.files
    ctx = client_context(files["ca.pem"], files["server.pem"], files["server.key"])
    link = ListeningLink(f"https://127.0.0.1:{agent.bound_port}", "ab" * 32, ctx)
    with pytest.raises(TrustError, match=r"expected thumbprint abab.*presented [0-9a-f]{64}"):
        await link.call(PING, NoParams(), 5)
    await link.close()


def _registration(live: LiveServer, token: str, thumbprint: str) -> registration.Registration:
    return registration.Registration(
        server=live.url,
        token=token,
        server_thumbprint=thumbprint,
        name="web-01",
        environments=("Dev",),
        roles=("web",),
        listen=None,
    )


async def test_wrong_server_thumbprint_stops_registration_before_the_token_is_sent(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """A wrong --server-thumbprint fails, naming both thumbprints; the token stays unused."""
    token = live_server.token(uses=1)
    paths = InstancePaths(tmp_path, tmp_path / "s", tmp_path / "c", tmp_path / "l")
    with pytest.raises(TrustError) as caught:
        await registration.register(paths, _registration(live_server, token, "cd" * 32))
    assert "cd" * 32 in caught.value.message and live_server.thumbprint in caught.value.message
    await registration.register(paths, _registration(live_server, token, live_server.thumbprint))


async def test_expired_token_is_refused(live_server: LiveServer, tmp_path: Path) -> None:
    """A token past its expiry cannot register a machine."""
    token = live_server.server.db.sync(accounts.create_token, 5, -1.0)
    paths = InstancePaths(tmp_path, tmp_path / "s", tmp_path / "c", tmp_path / "l")
    with pytest.raises(RemoteError, match="expired") as caught:
        await registration.register(paths, _registration(live_server, token, live_server.thumbprint))
    assert caught.value.status == 403
    assert live_server.server.db.sync(lambda c: c.execute("SELECT COUNT(*) FROM machines").fetchone()[0]) == 0


async def test_used_up_token_is_refused(live_server: LiveServer, tmp_path: Path) -> None:
    """A single-use token registers one machine and no second."""
    token = live_server.token(uses=1)
    first = InstancePaths(tmp_path / "a", tmp_path / "a/s", tmp_path / "a/c", tmp_path / "a/l")
    await registration.register(first, _registration(live_server, token, live_server.thumbprint))
    second = InstancePaths(tmp_path / "b", tmp_path / "b/s", tmp_path / "b/c", tmp_path / "b/l")
    reg = _registration(live_server, token, live_server.thumbprint)
    with pytest.raises(RemoteError, match="used up"):
        await registration.register(second, registration.Registration(**{**reg.__dict__, "name": "web-02"}))


@pytest.mark.parametrize(
    ("environments", "roles", "refusal"),
    [
        (("Production",), ("web",), "environments: this token may register only Dev, not Production"),
        (("Dev",), ("web", "db"), "roles: this token may register only web, not db"),
    ],
)
async def test_a_scoped_token_registers_only_what_it_allows(
    live_server: LiveServer,
    tmp_path: Path,
    environments: tuple[str, ...],
    roles: tuple[str, ...],
    refusal: str,
) -> None:
    """A token made for Dev/web cannot put a machine elsewhere; the refusal uses nothing up."""
    db = live_server.server.db
    token = db.sync(accounts.create_token, 1, 3600.0, ["Dev"], ["web"])
    paths = InstancePaths(tmp_path / "a", tmp_path / "a/s", tmp_path / "a/c", tmp_path / "a/l")
    wide = registration.Registration(
        **{
            **_registration(live_server, token, live_server.thumbprint).__dict__,
            "environments": environments,
            "roles": roles,
        }
    )
    with pytest.raises(RemoteError) as caught:
        await registration.register(paths, wide)
    assert caught.value.status == 403 and refusal in caught.value.message
    assert db.sync(lambda c: c.execute("SELECT COUNT(*) FROM machines").fetchone()[0]) == 0
    await registration.register(
        paths, _registration(live_server, token, live_server.thumbprint)
    )  # Dev/web: fine
    assert (await live_server.machines())["web-01"]["environments"] == ["Dev"]


async def test_existing_name_needs_force(live_server: LiveServer, tmp_path: Path) -> None:
    """Registering a name that exists fails with 409 unless forced (with a token made for it)."""
    paths = InstancePaths(tmp_path, tmp_path / "s", tmp_path / "c", tmp_path / "l")
    await registration.register(
        paths, _registration(live_server, live_server.token(), live_server.thumbprint)
    )
    named = live_server.server.db.sync(accounts.create_token, 1, 3600.0, (), (), "web-01")
    with pytest.raises(RemoteError, match="already registered") as caught:
        await registration.register(paths, _registration(live_server, named, live_server.thumbprint))
    assert caught.value.status == 409
    forced = registration.Registration(
        **{**_registration(live_server, named, live_server.thumbprint).__dict__, "force": True}
    )
    await registration.register(paths, forced)


def _client_at(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer old protocols; the server must say no
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def _handshake(port: int, ctx: ssl.SSLContext) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize("port_name", ["api", "polling"])
async def test_tls_below_1_2_is_refused_by_the_server(live_server: LiveServer, port_name: str) -> None:
    """The same client that completes a TLS 1.2 handshake is refused when it offers only TLS 1.1."""
    port = getattr(live_server.server.bound, port_name)
    if port_name == "api":  # the polling port wants a client certificate before the handshake completes
        await _handshake(port, _client_at(ssl.TLSVersion.TLSv1_2))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(port, _client_at(ssl.TLSVersion.TLSv1_1))


async def test_api_needs_a_valid_key(live_server: LiveServer) -> None:
    """API routes answer 401 with a JSON error body without a valid X-Api-Key."""
    for key in ("", "API-not-a-real-key"):
        status, body = await live_server.api("GET", "/api/Default/machines/v1", key=key)
        assert status == 401
        assert body["error"]["code"] == "unauthorized" and body["error"]["message"]


async def test_operator_commands_pin_the_server_and_keep_the_api_key_from_an_impostor(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """The CLI's client pins the server certificate of its home: a CA-signed impostor gets no key."""
    from server_shim.cli.api_client import ApiClient

    client = ApiClient.from_home(live_server.paths, live_server.url, None, None)
    assert client.pin == live_server.thumbprint
    assert isinstance(await client.request("GET", client.path("machines", "v1")), dict | list)
    # Any other certificate of the same CA (a tentacle's, say) is refused before a byte is sent.
    impostor = ApiClient(client.server, client.api_key, client.ca, pin="ab" * 32)
    with pytest.raises(TrustError, match="not the pinned peer"):
        await impostor.request("GET", impostor.path("machines", "v1"))


def test_server_and_tentacle_contexts_trust_the_server_ca_alone(
    live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No system root is trusted between server and tentacles: only the server's CA."""
    import trustme

    from tentacle.net.tls import server_context

    # A "system" root that a context loading the default store would pick up (OpenSSL reads
    # SSL_CERT_FILE when the defaults are loaded); a mirror context does take it.
    system_root = tmp_path / "system-roots.pem"
    trustme.CA().cert_pem.write_to_path(str(system_root))
    monkeypatch.setenv("SSL_CERT_FILE", str(system_root))
    assert pki_subject(system_root) in [
        c["subject"] for c in client_context(None, system_roots=True).get_ca_certs()
    ]
    conf = live_server.paths.config
    ca = conf / server_config.CA_CERT
    cert, key = conf / server_config.SERVER_CERT, conf / server_config.SERVER_KEY
    for ctx in (
        client_context(ca),
        client_context(ca, cert, key),
        server_context(cert, key, ca, require=True),
    ):
        assert [c["subject"] for c in ctx.get_ca_certs()] == [pki_subject(ca)]
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def pki_subject(ca: Path) -> object:
    """The subject of a PEM certificate as `ssl` reports it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    return ctx.get_ca_certs()[0]["subject"]


async def test_only_a_registered_listening_machine_may_report_its_port(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path
) -> None:
    """The port report wants a client certificate (401) of a registered machine (403) that listens
    (409), and a port 1-65535 (400); none of those moves the endpoint on record."""
    from tentacle.agent.listening import report_port

    listening = await tentacles.register("web-01", "listening")
    polling = await tentacles.register("db-01", "polling")
    ca = live_server.paths.config / server_config.CA_CERT
    stranger = live_server.ca_signed(tmp_path, "stranger")
    cert, key, _ = tentacle_files(listening)
    polling_cert, polling_key, _ = tentacle_files(polling)
    refused = [
        (client_context(ca), 1234, 401),
        (client_context(ca, stranger.cert, stranger.key), 1234, 403),
        (client_context(ca, polling_cert, polling_key), 1234, 409),
        (client_context(ca, cert, key), 0, 400),
        (client_context(ca, cert, key), 65536, 400),
    ]
    for ctx, port, status in refused:
        with pytest.raises(RemoteError) as caught:
            await report_port(live_server.url, [live_server.thumbprint], ctx, port)
        assert caught.value.status == status, caught.value.message
    listed = await live_server.machines()
    assert listed["web-01"]["endpoint"] == "https://127.0.0.1:0" and listed["db-01"]["endpoint"] is None
