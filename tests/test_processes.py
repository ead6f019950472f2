"""The real commands as subprocesses: what a new user types, end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rigs.instances import bound_ports, python, wait_until
from tests.conftest import daemon, init_argv, run_tentacle


def cli(program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `tentacle` or `server-shim` and capture its output."""
    done = subprocess.run(
        python(program.replace("-", "_"), *args), capture_output=True, text=True, timeout=60
    )
    if check and done.returncode != 0:
        pytest.fail(f"{program} {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons to kill at the end of the test, whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_tentacles_register_and_show_online_then_offline(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], database_url: str
) -> None:
    """Everything on port 0: both modes online within 10 s of starting, offline within 20 s of stopping.

    The server logs the ports it bound; the listening tentacle logs its own and tells the
    server, whose machines list then shows that port as the endpoint.
    """
    server = ["--home", str(tmp_path / "server")]
    cli("server-shim", *init_argv(tmp_path / "server", database_url))
    server_log = tmp_path / "server.log"
    processes.append(daemon("server_shim", *server, "run", log=server_log))
    wait_until(lambda: bound_ports(server_log.read_text()) is not None, 15)
    api, poll = bound_ports(server_log.read_text()) or (0, 0)
    assert api and poll and api != poll
    url = f"https://127.0.0.1:{api}"
    thumb = cli("server-shim", *server, "show-thumbprint").stdout.strip()
    token = cli("server-shim", *server, "token", "create", "--uses", "2").stdout.strip()
    common = ["--server", url, "--token", token, "--server-thumbprint", thumb, "--environment", "Dev"]
    common += ["--role", "web"]
    cli("tentacle", "--home", str(tmp_path / "t1"), "register", *common, "--name", "web-01", "--polling")
    listening = ["--name", "web-02", "--listen", "127.0.0.1:0"]
    cli("tentacle", "--home", str(tmp_path / "t2"), "register", *common, *listening)

    def machines() -> dict[str, dict[str, str]]:
        listed = json.loads(cli("server-shim", *server, "machines", "--server", url, "--json").stdout)
        return {m["name"]: m for m in listed}

    def statuses() -> dict[str, str]:
        return {name: m["status"] for name, m in machines().items()}

    assert statuses() == {"web-01": "offline", "web-02": "offline"}
    agents = [run_tentacle(tmp_path / t, tmp_path / f"{t}.log") for t in ("t1", "t2")]
    processes.extend(agents)
    wait_until(lambda: statuses() == {"web-01": "online", "web-02": "online"}, 10)
    found = re.search(r"listening\.started host=127\.0\.0\.1 port=(\d+)", (tmp_path / "t2.log").read_text())
    assert found is not None and int(found[1]) > 0
    assert machines()["web-02"]["endpoint"] == f"https://127.0.0.1:{found[1]}"
    status = json.loads(cli("tentacle", "--home", str(tmp_path / "t1"), "status", "--json").stdout)
    assert status["connection"]["state"] == "connected" and status["mode"] == "polling"
    for agent in agents:
        agent.send_signal(signal.SIGTERM)
    assert [agent.wait(15) for agent in agents] == [0, 0]
    wait_until(lambda: statuses() == {"web-01": "offline", "web-02": "offline"}, 20)
    processes[0].send_signal(signal.SIGTERM)
    assert processes[0].wait(15) == 0


def test_bad_configuration_exits_78_naming_the_key(tmp_path: Path) -> None:
    """A bad tentacle.toml makes `tentacle run` exit 78 with the key and the reason."""
    (tmp_path / "tentacle.toml").write_text('name = "web-01"\n[listen]\nport = 99999\n')
    done = cli("tentacle", "--home", str(tmp_path), "run", check=False)
    assert done.returncode == 78
    assert "listen.port: must be 0-65535" in done.stderr


def test_unknown_configuration_key_exits_78(tmp_path: Path) -> None:
    """A typo in the configuration is an error that names it, not silence."""
    (tmp_path / "tentacle.toml").write_text('name = "web-01"\nrols = ["web"]\n')
    done = cli("tentacle", "--home", str(tmp_path), "run", check=False)
    assert done.returncode == 78 and "rols: unknown key" in done.stderr


def test_unregistered_tentacle_run_exits_78(tmp_path: Path) -> None:
    """Running before registering says how to register, with the configuration exit code."""
    done = cli("tentacle", "--home", str(tmp_path), "run", check=False)
    assert done.returncode == 78 and "tentacle register" in done.stderr


def test_server_run_before_init_exits_78(tmp_path: Path) -> None:
    """`server-shim run` on an empty home tells the user to run init."""
    done = cli("server-shim", "--home", str(tmp_path), "run", check=False)
    assert done.returncode == 78 and "server-shim init" in done.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """Missing or malformed flags are usage errors (exit 2) with a message."""
    done = cli("tentacle", "--home", str(tmp_path), "register", "--server", "https://x", check=False)
    assert done.returncode == 2 and "required" in done.stderr
    done = cli(
        "tentacle",
        "--home",
        str(tmp_path),
        "register",
        "--server",
        "https://127.0.0.1:1",
        "--token",
        "t",
        "--server-thumbprint",
        "nothex",
        "--name",
        "a",
        "--environment",
        "E",
        "--role",
        "r",
        "--polling",
        check=False,
    )
    assert done.returncode == 2 and "thumbprint" in done.stderr


def test_new_certificate_prints_its_thumbprint_alone(tmp_path: Path) -> None:
    """`new-certificate` and `show-thumbprint` print the same single value; a second run needs --force."""
    made = cli("tentacle", "--home", str(tmp_path), "new-certificate").stdout
    shown = cli("tentacle", "--home", str(tmp_path), "show-thumbprint").stdout
    assert made == shown and len(made.strip()) == 64 and made.count("\n") == 1
    again = cli("tentacle", "--home", str(tmp_path), "new-certificate", check=False)
    assert again.returncode == 2 and "--force" in again.stderr
    assert oct(os.stat(tmp_path / "tentacle.key").st_mode & 0o777) == "0o600"


def test_show_crl_prints_a_crl_signed_by_the_ca(tmp_path: Path) -> None:
    """`show-crl` prints a PEM revocation list, issued and signed by the server's CA, valid a year."""
    from cryptography import x509

    home = str(tmp_path / "server")
    cli("server-shim", "--home", home, "init")
    crl = x509.load_pem_x509_crl(cli("server-shim", "--home", home, "show-crl").stdout.encode())
    ca = x509.load_pem_x509_certificate(cli("server-shim", "--home", home, "show-ca").stdout.encode())
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
    assert (crl.next_update_utc - crl.last_update_utc).days >= 364
