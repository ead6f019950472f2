"""The command line around the NuGet feed: scoped API keys, export URLs, the server certificate's names."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from cryptography import x509

from server_shim import server_config
from server_shim.cli import main as cli
from server_shim.store import accounts
from server_shim.store.database import Database
from tentacle.common.paths import InstancePaths
from tentacle.net import pki
from tests.feed_helpers import make_zip


def test_api_key_create_with_scopes(server_home: InstancePaths, capsys: pytest.CaptureFixture[str]) -> None:
    """`api-key create ci --scope feed:push` prints a key that has exactly that scope."""
    home = ["--home", str(server_home.config)]
    assert cli.main([*home, "api-key", "create", "ci", "--scope", "feed:push"]) == 0
    key = capsys.readouterr().out.strip()
    db = Database(server_config.load(server_home).database_location(server_home))
    try:
        found = db.sync(accounts.api_key, key)
        assert found is not None and (found.name, found.scopes) == ("ci", frozenset({"feed:push"}))
        assert found.allows("feed:read") and not found.allows("feed:delete") and not found.allows("all")
        admin = db.sync(
            accounts.api_key, (server_home.config / server_config.ADMIN_KEY_FILE).read_text().strip()
        )
        assert admin is not None and admin.allows("feed:delete") and admin.allows("all")
    finally:
        db.close()


def test_an_unknown_scope_is_a_usage_error(
    server_home: InstancePaths, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2, and the message lists the scopes there are."""
    assert cli.main(["--home", str(server_home.config), "api-key", "create", "ci", "--scope", "deploy"]) == 2
    err = capsys.readouterr().err
    assert "--scope 'deploy': unknown" in err and "feed:push" in err


def test_export_defaults_to_the_public_url_and_can_be_relative(
    server_home: InstancePaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """URLs start with the public URL unless --base-url says (stderr notes it); --relative: tentacles only."""
    home = ["--home", str(server_home.config)]
    assert cli.main([*home, "package", "push", str(make_zip(tmp_path / "src/Web.1.0.0.zip"))]) == 0
    out = tmp_path / "export"
    assert cli.main([*home, "feed", "export", str(out)]) == 0
    public = server_config.load(server_home).public_url
    index = json.loads((out / "index.json").read_text())
    assert {r["@id"] for r in index["resources"]} >= {f"{public}/flatcontainer/", f"{public}/registration/"}
    assert "pass --base-url" in capsys.readouterr().err
    relative = tmp_path / "relative"
    assert cli.main([*home, "feed", "export", "--relative", str(relative)]) == 0
    index = json.loads((relative / "index.json").read_text())
    assert index["resources"] == [
        {
            "@id": "flatcontainer/",
            "@type": "PackageBaseAddress/3.0.0",
            "comment": "Package files by lowercase id",
        }
    ]
    assert not (relative / "registration").exists()


def test_the_server_certificate_names_the_public_host_and_localhost(tmp_path: Path) -> None:
    """Item 7: DNS names for clients that match host names only (Mono), the loopback IPs besides."""
    home = tmp_path / "server"
    assert cli.main(["--home", str(home), "init", "--public-url", "https://deploy.example:8443"]) == 0
    san = pki.load_cert(home / server_config.SERVER_CERT).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["deploy.example", "localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
