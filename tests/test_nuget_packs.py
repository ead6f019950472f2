"""Packages packed by real NuGet clients deploy as NuGet installs them; exports serve real clients.

NuGet 5.8 ``pack`` stores member names as they are; Debian's NuGet 2.8.7 ``pack`` stores them
percent-encoded (``my%20page.html``). NuGet decodes both on install. Here each is pushed with
NuGet.exe, installed with NuGet.exe (the oracle: where NuGet puts every file), and deployed
to a tentacle; the tentacle's package folder must hold the same files with the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from rigs.nginx_mirror import Nginx, NginxMissing, Pki
from server_shim import server_config
from server_shim.store import feed_export
from server_shim.store import feed_store as feed
from tests.conftest import LiveServer, Tentacles
from tests.deploying import apply, deploy, release, step, texts, wait_task
from tests.nuget_tools import (
    NuGet,
    files_below,
    make_package,
    nuget2,
    nuget5,
    nuspec,
    source_config,
    trusting_home,
)

pytestmark = pytest.mark.slow

# Names that NuGet 2.x escapes when it packs (space, '%', non-ASCII, '+', '='), nested folders.
CONTENT = {
    "site/my page.html": b"<h1>hello</h1>\n",
    "site/css/main.css": b"body { margin: 0 }\n",
    "docs/caf\u00e9 menu.txt": b"croissant\n",
    "100% sure.txt": b"sure\n",
    "a+b=c.txt": b"algebra\n",
    "readme.txt": b"read me\n",
}
FILES = "<files><file src='content/**' target='content' /></files>"


async def pack(client: NuGet, folder: Path, package_id: str) -> Path:
    """Pack CONTENT under content/ with this client; the .nupkg it wrote."""
    for name, data in CONTENT.items():
        (folder / "content" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "content" / name).write_bytes(data)
    (folder / f"{package_id}.nuspec").write_text(nuspec(package_id, "1.0.0", files=FILES))
    await client.ok("pack", f"{package_id}.nuspec", "-NoDefaultExcludes", cwd=folder)
    return folder / f"{package_id}.1.0.0.nupkg"


def sha256_of(files: dict[str, bytes]) -> dict[str, str]:
    """Each file's SHA-256."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def deployed_files(lines: list[str], step_name: str) -> dict[str, str]:
    """What a step's `sha256sum` lines said: path -> hash."""
    found = {}
    for line in lines:
        marker = f"[{step_name}] "
        if line.startswith(marker):
            digest, _, path = line[len(marker) :].partition("  ")
            found[path.removeprefix("./")] = digest
    return found


LIST_FILES = (
    'cd "$PACKAGE_DIR" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sed "s/^/[$STEP] /"'
)


async def test_packages_packed_by_nuget_5_and_2_deploy_every_file_where_nuget_puts_it(
    live_server: LiveServer, tentacles: Tentacles, tmp_path: Path
) -> None:
    """Both packs, pushed and installed by NuGet.exe, deploy the same files, names decoded, bytes equal."""
    home = trusting_home(tmp_path / "home", live_server.paths.config / server_config.CA_CERT)
    client, old = nuget5(home), nuget2(home)
    index = f"https://localhost:{live_server.server.bound.api}/nuget/v3/index.json"
    packed = {
        "Packed.By.Five": await pack(client, tmp_path / "five", "Packed.By.Five"),
        "Packed.By.Two": await pack(old, tmp_path / "two", "Packed.By.Two"),
    }
    for package in packed.values():
        await client.ok("push", str(package), "-Source", index, "-ApiKey", live_server.admin_key)
    config = source_config(tmp_path / "reader", "tentacle", index, live_server.admin_key)
    expected = {}
    for package_id in packed:
        out = tmp_path / f"installed-{package_id}"
        await client.ok(
            "install",
            package_id,
            "-Version",
            "1.0.0",
            "-OutputDirectory",
            str(out),
            "-ConfigFile",
            str(config),
        )
        files = files_below(out / f"{package_id}.1.0.0")
        del files[f"{package_id}.1.0.0.nupkg"]  # NuGet keeps the package file beside what it extracts
        expected[package_id] = sha256_of(files)
    assert set(expected["Packed.By.Two"]) == {f"content/{name}" for name in CONTENT}
    await tentacles.register("web-01", "polling")
    await tentacles.start("web-01")
    steps = [
        {**step(package_id, LIST_FILES.replace("$STEP", package_id)), "package": {"id": package_id}}
        for package_id in packed
    ]
    await apply(live_server, {"name": "Packs", "steps": steps})
    version = await release(live_server, "Packs")
    task = await wait_task(live_server, await deploy(live_server, "Packs", version), 60)
    assert task["state"] == "success", task
    lines = await texts(live_server, task["taskId"])
    for package_id, wanted in expected.items():
        got = deployed_files(lines, package_id)
        got.pop(f"{package_id}.nuspec")  # the tentacle keeps the manifest, NuGet does not
        assert got == wanted, package_id


def absolute_ids(document: Any) -> list[str]:
    """Every @id in a JSON document."""
    if isinstance(document, dict):
        own = [document["@id"]] if isinstance(document.get("@id"), str) else []
        return own + [i for value in document.values() for i in absolute_ids(value)]
    if isinstance(document, list):
        return [i for value in document for i in absolute_ids(value)]
    return []


async def test_an_export_served_by_nginx_installs_by_id(live_server: LiveServer, tmp_path: Path) -> None:
    """`feed export --base-url` + nginx: every @id is absolute, and NuGet.exe installs by id from it."""
    feed_dir = feed.store_dir(live_server.paths.state)
    for version in ("1.0.0", "1.1.0", "2.0.0-beta.1"):
        package = make_package(tmp_path / "src", "Mirrored.Web", version, version.encode())
        await asyncio.to_thread(feed.push, live_server.server.db, feed_dir, package)
    out = tmp_path / "export"
    out.mkdir()
    pki = Pki.create(tmp_path / "pki")
    try:  # nginx first, on a port of its own; the export then names that port in every @id
        nginx = Nginx(tmp_path / "nginx", out, pki, verify_clients=False).start()
    except NginxMissing as exc:
        pytest.fail(str(exc))
    base = f"https://localhost:{nginx.port}/"
    await asyncio.to_thread(feed_export.export, live_server.server.db, feed_dir, out, base)
    for document in out.rglob("*.json"):
        if document.name != feed_export.MANIFEST_FILE:
            ids = absolute_ids(json.loads(document.read_text()))
            assert all(i.startswith(base) for i in ids), document
    try:
        client = nuget5(trusting_home(tmp_path / "home", pki.ca))
        source = ["-Source", f"{base}index.json"]
        for wanted, args in (
            ("1.0.0", ["-Version", "1.0.0"]),
            ("1.1.0", []),
            ("2.0.0-beta.1", ["-Prerelease"]),
        ):
            target = tmp_path / f"out-{wanted}"
            await client.ok("install", "Mirrored.Web", *args, *source, "-OutputDirectory", str(target))
            installed = target / f"Mirrored.Web.{wanted}" / "content" / "readme.txt"
            assert installed.read_bytes() == wanted.encode()
    finally:
        nginx.stop()
