"""Keys made at run time when the config folder is read-only, as systemd's hardened units leave it.

Under `ProtectSystem=strict` the service writes only its state, cache and logs folders
(`ConfigurationDirectory=` stays read-only). Here both programs run as they would there:
no --home, the folders given by $CONFIGURATION_DIRECTORY and friends, the config folder a
read-only tmpfs. A home from before signing and sealing still starts (its encryption and
signing keys go to the state folder, with a warning), a rotation writes its new key there
too, and a tentacle keeps the key a rotation handed it across a restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rigs.instances import bound_ports, python, stop_process, wait_until
from tentacle.agent.signatures import PIN_FILE
from tests.real_fleet import command

SYSTEMD = ("CONFIGURATION_DIRECTORY", "STATE_DIRECTORY", "CACHE_DIRECTORY", "LOGS_DIRECTORY")


class Layout:
    """An instance's four folders as systemd passes them; the config folder can be frozen read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders = {name: root / name.split("_")[0].lower() for name in SYSTEMD}
        for folder in self.folders.values():
            folder.mkdir(parents=True)
        self.mounted: Path | None = None

    @property
    def config(self) -> Path:
        return self.folders["CONFIGURATION_DIRECTORY"]

    @property
    def state(self) -> Path:
        return self.folders["STATE_DIRECTORY"]

    def env(self) -> dict[str, str]:
        """The environment of the service: these folders, no home."""
        env = {k: v for k, v in os.environ.items() if not k.endswith("_HOME") and k not in SYSTEMD}
        return env | {name: str(folder) for name, folder in self.folders.items()}

    def freeze_config(self) -> None:
        """Put the config folder's files on a read-only tmpfs in its place."""
        saved = self.root / "config-files"
        shutil.copytree(self.config, saved)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.config)], check=True)
        self.mounted = self.config
        shutil.copytree(saved, self.config, dirs_exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(self.config)], check=True)
        assert subprocess.run(["touch", str(self.config / "probe")], check=False).returncode != 0

    def thaw(self) -> None:
        if self.mounted is not None:
            subprocess.run(["umount", "-l", str(self.mounted)], check=False)
            self.mounted = None


@pytest.fixture
def layouts(tmp_path: Path) -> Iterator[tuple[Layout, Layout]]:
    """A server's and a tentacle's folders; read-only mounts undone at the end."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a read-only tmpfs as the config folder: run it as root (as CI does)")
    server, tentacle = Layout(tmp_path / "server"), Layout(tmp_path / "tentacle")
    yield server, tentacle
    server.thaw()
    tentacle.thaw()


def _run(module: str, layout: Layout, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(python(module, "run"), stdout=out, stderr=subprocess.STDOUT, env=layout.env())


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _as_before_this_change(server: Layout) -> None:
    """The home an older server made: no encryption key, no signing key."""
    (server.config / "encryption.key").unlink()
    shutil.rmtree(server.config / "signing")
    with contextlib.closing(sqlite3.connect(server.state / "server.db")) as conn, conn:
        conn.execute("DELETE FROM signing_keys")


def test_a_read_only_config_folder_takes_keys_in_the_state_folder(
    layouts: tuple[Layout, Layout], tmp_path: Path
) -> None:
    """First start and rotation write their keys to the state folder; a tentacle keeps a rotated pin."""
    server, tentacle = layouts
    _ok(
        command(
            "server_shim",
            "init",
            "--listen",
            "127.0.0.1:0",
            "--polling-listen",
            "127.0.0.1:0",
            env=server.env(),
        )
    )
    _as_before_this_change(server)
    server.freeze_config()
    log = tmp_path / "server.log"
    procs = [_run("server_shim", server, log)]
    try:
        wait_until(lambda: bound_ports(log.read_text()) is not None, 60, what="the server starts")
        api, _ = bound_ports(log.read_text()) or (0, 0)
        text = log.read_text()
        assert "values.key_in_state" in text and (server.state / "encryption.key").exists()
        assert len(list((server.state / "signing").glob("*.key"))) == 1
        url = f"https://127.0.0.1:{api}"
        token = _ok(command("server_shim", "token", "create", env=server.env()))
        thumbprint = _ok(command("server_shim", "show-thumbprint", env=server.env()))
        register = ["register", "--server", url, "--token", token, "--server-thumbprint", thumbprint]
        register += ["--name", "web-01", "--environment", "Production", "--role", "web", "--polling"]
        _ok(command("tentacle", *register, env=tentacle.env()))
        tentacle.freeze_config()
        agent_log = tmp_path / "tentacle.log"
        procs.append(_run("tentacle", tentacle, agent_log))
        client = ["--server", url]

        def online() -> bool:
            return (
                '"online"' in command("server_shim", "machines", "--json", *client, env=server.env()).stdout
            )

        wait_until(online, 30, what="web-01 online")
        new_id = _ok(command("server_shim", "signing-key", "rotate", *client, env=server.env()))
        assert (server.state / "signing" / f"{new_id}.key").exists()
        wait_until(lambda: (tentacle.state / PIN_FILE).exists(), 30, what="web-01 pins the rotated key")
        stop_process(procs.pop())
        procs.append(_run("tentacle", tentacle, agent_log))
        status = _ok(command("tentacle", "status", "--json", env=tentacle.env()))
        assert f'"signingKeyId": "{new_id}"' in status  # the rotated pin survived the restart
    finally:
        for proc in procs:
            stop_process(proc)
