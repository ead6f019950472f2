"""Operator commands away from the server's home (issue 15, item 6): the API key goes to the server alone.

Real processes: `server-shim run`, real registered tentacles (both modes) whose CA-signed
certificates an impostor serves, and the `server-shim` command line as an operator runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_shim.ca import Authority
from tentacle.net import pki
from tests.real_fleet import RealFleet, command


class Impostor:
    """A TLS server presenting a certificate of the server's CA; it records every request it reads."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                conn.settimeout(10)
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    data = tls.recv(65536)
                    if data:
                        self.received.append(data)
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    def close(self) -> None:
        self.sock.close()


def _stranger(fleet: RealFleet, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate the server's CA signed for a machine called ``name`` (as registration would)."""
    key = pki.new_key()
    cert = Authority(fleet.server.home).sign(pki.build_csr(key, name).decode(), name)
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    pki.write_private(cert_path, pki.cert_pem(cert))
    pki.write_private(key_path, pki.key_pem(key))
    return cert_path, key_path


@pytest.fixture
def away(tmp_path: Path) -> dict[str, str]:
    """The environment of an operator's shell away from the server: no home, an empty config folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVER_SHIM_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "operator-config")
    env["HOME"] = str(tmp_path / "operator-home")
    return env


def _operator(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return command("server_shim", *args, env=env)


@pytest.fixture
def impostor_of(real_fleet: RealFleet, mode: str) -> Iterator[Impostor]:
    """A real tentacle registered in ``mode``; an impostor serving its certificate and key."""
    token = real_fleet.server.cli("token", "create")
    done = real_fleet.register("rogue-01", mode, token)
    assert done.returncode == 0, done.stderr
    home = real_fleet.home("rogue-01")
    impostor = Impostor(home / "tentacle.crt", home / "tentacle.key")
    yield impostor
    impostor.close()


def test_ca_alone_refuses_a_tentacle_posing_as_the_server(
    real_fleet: RealFleet, impostor_of: Impostor, away: dict[str, str]
) -> None:
    """`--server URL --ca ca.pem`: a rogue tentacle's CA-signed certificate fails the host check."""
    ca = str(real_fleet.server.home / "ca.pem")
    key = real_fleet.server.admin_key()
    url = f"https://127.0.0.1:{impostor_of.port}"
    done = _operator(away, "machines", "--server", url, "--ca", ca, "--api-key", key)
    assert done.returncode != 0 and "127.0.0.1" in done.stderr
    assert impostor_of.received == []
    real = _operator(
        away, "machines", "--json", "--server", real_fleet.server.url, "--ca", ca, "--api-key", key
    )
    assert real.returncode == 0, real.stderr
    assert "rogue-01" in {m["name"] for m in json.loads(real.stdout)}


def test_ca_alone_refuses_a_machine_named_like_the_server_host(
    real_fleet: RealFleet, tmp_path: Path, away: dict[str, str]
) -> None:
    """A machine named ``localhost`` has that name as its common name: the host check never reads it."""
    impostor = Impostor(*_stranger(real_fleet, tmp_path, "localhost"))
    ca = str(real_fleet.server.home / "ca.pem")
    url = f"https://localhost:{impostor.port}"
    done = _operator(
        away, "machines", "--server", url, "--ca", ca, "--api-key", real_fleet.server.admin_key()
    )
    impostor.close()
    assert done.returncode != 0 and "localhost" in done.stderr
    assert impostor.received == []


def test_a_pinned_thumbprint_refuses_the_impostor_and_reaches_the_server(
    real_fleet: RealFleet, impostor_of: Impostor, away: dict[str, str]
) -> None:
    """`--server-thumbprint T`: only that certificate is the server, with no CA or home at all."""
    thumbprint = real_fleet.server.cli("show-thumbprint")
    key = real_fleet.server.admin_key()
    url = f"https://127.0.0.1:{impostor_of.port}"
    done = _operator(away, "machines", "--server", url, "--server-thumbprint", thumbprint, "--api-key", key)
    assert done.returncode != 0 and thumbprint in done.stderr
    assert impostor_of.received == []
    real = _operator(
        away,
        "machines",
        "--server",
        real_fleet.server.url,
        "--server-thumbprint",
        thumbprint,
        "--api-key",
        key,
    )
    assert real.returncode == 0 and "rogue-01" in real.stdout


def test_plain_http_is_refused_before_anything_is_sent(real_fleet: RealFleet, away: dict[str, str]) -> None:
    """`--server http://...` exits 2 with the reason, and no connection is even opened."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    key = real_fleet.server.admin_key()
    done = _operator(away, "machines", "--server", f"http://127.0.0.1:{port}", "--api-key", key)
    assert done.returncode == 2 and "plain http" in done.stderr and "https://" in done.stderr
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    listener.close()
    login = _operator(
        away, "login", f"http://127.0.0.1:{port}", "--server-thumbprint", "ab" * 32, "--api-key", key
    )
    assert login.returncode == 2 and "plain http" in login.stderr


def test_login_saves_a_private_file_that_later_commands_use(
    real_fleet: RealFleet, away: dict[str, str]
) -> None:
    """`login` checks URL, thumbprint and key, writes them 0600 (folder 0700); `machines` uses them."""
    thumbprint = real_fleet.server.cli("show-thumbprint")
    url, key = real_fleet.server.url, real_fleet.server.admin_key()
    saved = Path(away["XDG_CONFIG_HOME"]) / "server-shim" / "login.toml"
    wrong = _operator(away, "login", url, "--server-thumbprint", "cd" * 32, "--api-key", key)
    assert wrong.returncode != 0 and not saved.exists()
    bad_key = _operator(away, "login", url, "--server-thumbprint", thumbprint, "--api-key", "API-wrong")
    assert bad_key.returncode != 0 and "invalid API key" in bad_key.stderr and not saved.exists()
    done = _operator(away, "login", url, "--server-thumbprint", thumbprint, "--api-key", key)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    listed = _operator(away, "machines", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    saved.chmod(0o644)
    exposed = _operator(away, "machines")
    assert exposed.returncode == 78 and "chmod 600" in exposed.stderr
    saved.chmod(0o600)
    assert _operator(away, "logout").returncode == 0 and not saved.exists()
    alone = _operator(away, "machines")
    assert alone.returncode == 78 and "server-shim login" in alone.stderr


def test_login_reads_the_key_from_stdin_rather_than_the_command_line(
    real_fleet: RealFleet, away: dict[str, str]
) -> None:
    """Without --api-key the key is read from stdin (a prompt on a terminal): it stays out of `ps`."""
    thumbprint = real_fleet.server.cli("show-thumbprint")
    done = subprocess.run(
        [*_argv("login", real_fleet.server.url, "--server-thumbprint", thumbprint)],
        input=real_fleet.server.admin_key() + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=away,
    )
    assert done.returncode == 0, done.stderr
    assert _operator(away, "machines").returncode == 0


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "server_shim", *args]
