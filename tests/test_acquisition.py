"""Acquisition end to end: a real server, real tentacles in both modes, a real nginx mirror.

The server's built-in feed holds two packages. One step's package is pushed (streamed to a
listening tentacle by the server; fetched from the server's feed by a polling one), the
other is pulled from an nginx mirror serving `feed export`'s output with mutual TLS against
the server's CA. Every package is on every target before any deployment step runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import ipaddress
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rigs.nginx_mirror import Mirrors, Nginx, Pki, TcpProxy
from server_shim import server_config
from server_shim.store import feed_export
from server_shim.store import feed_store as feed
from tentacle.common.paths import InstancePaths
from tentacle.net.pki import build_certificate, cert_pem, key_pem, load_cert, new_key, write_private
from tentacle.net.tls import client_context
from tests.conftest import LiveServer, Tentacles, eventually, run_tentacle
from tests.deploying import apply, deploy, release, step, texts, wait_task

WEB, DB = "Shop.Web", "Shop.Db"
TEXT = b"web package " * 50_000


def _zip(members: dict[str, bytes]) -> bytes:
    """A zip that stores its members as they are (so zstd on the wire has work to do)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _tgz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _mirror_pki(live: LiveServer, directory: Path) -> Pki:
    """A certificate for nginx on 127.0.0.1 issued by the server's own CA (as a site would get one)."""
    conf = live.paths.config
    ca_cert = load_cert(conf / server_config.CA_CERT)
    ca_key = serialization.load_pem_private_key((conf / server_config.CA_KEY).read_bytes(), None)
    directory.mkdir(parents=True)
    key = new_key()
    san: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = build_certificate("mirror", key.public_key(), ca_key, issuer=ca_cert.subject, san=san)  # type: ignore[arg-type]
    files = Pki(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "-",
        directory / "-",
    )
    write_private(files.ca, cert_pem(ca_cert), mode=0o644)
    write_private(files.server_cert, cert_pem(cert), mode=0o644)
    write_private(files.server_key, key_pem(key))
    return files


class Site:
    """The server with two packages in its feed and an nginx mirror of that feed."""

    def __init__(self, live: LiveServer, tmp: Path) -> None:
        self.live, self.tmp = live, tmp
        self.feed_dir = feed.store_dir(live.paths.state)
        self.mirror: Nginx | None = None
        self.mirrors: list[Mirrors] = []

    async def push_package(self, name: str, data: bytes) -> None:
        path = self.tmp / name
        path.write_bytes(data)
        await asyncio.to_thread(feed.push, self.live.server.db, self.feed_dir, path)

    async def start_mirror(self, crl: Path | None = None) -> Nginx:
        out = self.tmp / "export"
        await asyncio.to_thread(feed_export.export, self.live.server.db, self.feed_dir, out, None)
        pki_dir = self.tmp / f"mirror-pki-{len(self.mirrors)}"
        mirrors = Mirrors(self.tmp / f"nginx-{len(self.mirrors)}", _mirror_pki(self.live, pki_dir))
        self.mirrors.append(mirrors)
        self.mirror = mirrors.start(out, crl=crl)
        await self.live.server.db.run(feed.add_feed, "near", [self.mirror.index_url])
        return self.mirror


@pytest.fixture
async def site(live_server: LiveServer, tmp_path: Path) -> Any:
    made = Site(live_server, tmp_path)
    # Text compresses: the push of Web goes as zstd; Db is a .tar.gz and would not.
    await made.push_package(f"{WEB}.1.0.0.zip", _zip({"readme.txt": b"web package " * 50_000}))
    await made.push_package(
        f"{DB}.2.0.0.tar.gz", _tgz({"migrate.sh": b"echo migrated $TENTACLE_MACHINE_NAME\n"})
    )
    await made.start_mirror()
    yield made
    for mirrors in made.mirrors:
        mirrors.stop_all()


PROCESS = {
    "name": "Shop",
    "steps": [
        step("Pre", "echo pre-acquisition on $TENTACLE_MACHINE_NAME", ("web", "db"), phase="preAcquisition"),
        {**step("Web", 'head -c 24 "$PACKAGE_DIR/readme.txt"; echo', ("web",)), "package": {"id": WEB}},
        {
            **step("Db", 'bash "$PACKAGE_DIR/migrate.sh"', ("db",)),
            "package": {"id": DB, "feed": "near", "acquisition": "pull"},
        },
    ],
}

WEB_AND_DB: dict[str, tuple[str, ...]] = {"web-01": ("web",), "db-01": ("db",)}


def _cached(tentacles: Tentacles, name: str) -> list[Path]:
    root = tentacles.root / name
    return [p for p in root.rglob("sha512/*/*") if p.is_file()]


async def test_pushed_and_pulled_packages_reach_every_target_before_any_step(
    site: Site, tentacles: Tentacles, mode: str
) -> None:
    """The pushed package comes from the server, the pulled one from nginx; then the steps run."""
    live = site.live
    await tentacles.bring_online(mode, WEB_AND_DB)
    await apply(live, PROCESS)
    task_id = await deploy(live, "Shop", await release(live, "Shop"))
    done = await wait_task(live, task_id, timeout=60)
    assert done["state"] == "success", done.get("error")
    assert "web package web" in "\n".join(await texts(live, task_id, "web-01"))
    assert "migrated db-01" in await texts(live, task_id, "db-01")
    assert site.mirror is not None
    pulled = [line for line in site.mirror.requests(".tar.gz", at_least=1) if line.status == 200]
    assert len(pulled) == 1  # db-01 pulled the file from the mirror; nobody else asked
    if mode == "listening":
        assert live.server.pusher.sent > 0
        assert 0 < live.server.pusher.sent < len(TEXT) / 20  # the stored text went as zstd
    else:
        assert live.server.pusher.sent == 0  # polling targets fetch; the server pushes nothing
    assert len(_cached(tentacles, "web-01")) == 1 and len(_cached(tentacles, "db-01")) == 1


async def test_a_cached_package_is_not_transferred_again(site: Site, tentacles: Tentacles, mode: str) -> None:
    """The second deployment of the same release finds both packages in the caches."""
    live = site.live
    await tentacles.bring_online(mode, WEB_AND_DB)
    await apply(live, PROCESS)
    version = await release(live, "Shop")
    first = await wait_task(live, await deploy(live, "Shop", version), timeout=60)
    assert first["state"] == "success", first.get("error")
    sent = live.server.pusher.sent
    assert site.mirror is not None
    pulls = len(site.mirror.requests(".tar.gz"))
    second = await wait_task(live, await deploy(live, "Shop", version), timeout=60)
    assert second["state"] == "success", second.get("error")
    assert live.server.pusher.sent == sent
    assert len(site.mirror.requests(".tar.gz")) == pulls


async def test_a_dead_mirror_fails_acquisition_naming_it_and_runs_no_step(
    site: Site, tentacles: Tentacles, mode: str, tmp_path: Path
) -> None:
    """With the only mirror down, the task fails in acquisition with the mirror and its reason."""
    live = site.live
    await tentacles.bring_online(mode, WEB_AND_DB)
    assert site.mirror is not None
    url = site.mirror.index_url
    site.mirror.stop()
    marker = tmp_path / "ran"
    after = step("After", f"touch {marker}", ("web", "db"))
    process = {**PROCESS, "steps": [*PROCESS["steps"], after]}
    await apply(live, process)
    done = await wait_task(live, await deploy(live, "Shop", await release(live, "Shop")), timeout=60)
    assert done["state"] == "failed"
    assert DB in done["error"] and url.split("/index.json")[0] in done["error"], done["error"]
    assert not marker.exists()
    assert not any("web package" in line for line in await texts(live, done["taskId"], "web-01"))


async def test_a_push_cut_half_way_resumes(site: Site, tentacles: Tentacles, tmp_path: Path) -> None:
    """A listening tentacle's push is cut after some bytes; the next PUT resumes from its partial."""
    live = site.live
    big = os.urandom(3 * 1024 * 1024)  # random: sent as it is, so the cut lands mid-file
    await site.push_package(f"{WEB}.1.0.1.zip", _zip({"readme.txt": b"web package v2", "blob": big}))
    await tentacles.register("web-01", "listening", roles=("web",))
    await tentacles.start("web-01")
    await eventually(lambda: live.online("web-01"), 10)
    cuts: list[int] = []
    real_send = live.server.pusher._send

    async def cut_once(url: str, path: Path, pkg: Any, offset: int, *, thumbprint: str) -> int:
        if not cuts:
            cuts.append(offset)
            raise_after = 1024 * 1024
            return await _send_part(live, url, path, offset, raise_after, thumbprint)
        cuts.append(offset)
        return await real_send(url, path, pkg, offset, thumbprint=thumbprint)

    live.server.pusher._send = cut_once  # type: ignore[method-assign]
    await apply(
        live,
        {
            "name": "Big",
            "steps": [{**step("Web", "head -c 14 $PACKAGE_DIR/readme.txt; echo"), "package": {"id": WEB}}],
        },
    )
    done = await wait_task(live, await deploy(live, "Big", await release(live, "Big")), timeout=60)
    assert done["state"] == "success", done.get("error")
    assert cuts[0] == 0 and cuts[1] >= 1024 * 1024 - 64 * 1024, cuts  # the second PUT resumed
    assert "web package v2" in await texts(live, done["taskId"], "web-01")


async def _send_part(live: LiveServer, url: str, path: Path, offset: int, limit: int, thumbprint: str) -> int:
    """PUT the first `limit` bytes then drop the connection (a cut link)."""
    import aiohttp

    from tentacle.net.tls import pinned_connector
    from tentacle.protocol.push_wire import OFFSET

    async def body() -> Any:
        with path.open("rb") as handle:
            handle.seek(offset)
            sent = 0
            while sent < limit:
                chunk = handle.read(64 * 1024)
                sent += len(chunk)
                yield chunk
                await asyncio.sleep(0.01)  # let the tentacle write what it got
        raise ConnectionResetError("cut by the test")

    from server_shim.dispatch.pusher import PushError

    try:
        async with (
            aiohttp.ClientSession(connector=pinned_connector([thumbprint])) as session,
            session.put(url, data=body(), headers={OFFSET: str(offset)}, ssl=live.server.pusher.ctx),
        ):
            pass
    except Exception as exc:
        raise PushError(f"cut: {exc}") from exc
    raise PushError("the cut did not cut")


async def test_a_tentacle_killed_during_acquisition_resumes_it_after_restart(
    site: Site, tentacles: Tentacles, mode: str, tmp_path: Path
) -> None:
    """kill -9 mid-download: after restart the acquisition runs again, resuming the partial."""
    live = site.live
    blob = os.urandom(12 * 1024 * 1024)
    await site.push_package(f"{DB}.3.0.0.tar.gz", _tgz({"migrate.sh": b"echo migrated\n", "blob": blob}))
    await asyncio.to_thread(feed_export.export, live.server.db, site.feed_dir, tmp_path / "export", None)
    assert site.mirror is not None
    # Stalls past the writer's first 4 MiB buffer, so that the partial has bytes on disk.
    proxy = await TcpProxy(site.mirror.port, stall_after=6 * 1024 * 1024).start()
    await live.server.db.run(feed.add_feed, "near", [proxy.index_url])
    paths = await tentacles.register("db-01", mode, roles=("db",))
    agent = run_tentacle(paths.config, tmp_path / "agent.log")
    marker = tmp_path / "ran"
    try:
        await eventually(lambda: live.online("db-01"), 10)
        db = {
            **step("Db", f"echo x >> {marker}", ("db",)),
            "package": {"id": DB, "feed": "near", "acquisition": "pull"},
        }
        await apply(live, {"name": "Kill", "steps": [db]})
        task_id = await deploy(live, "Kill", await release(live, "Kill"))
        partials = tentacles.root / "db-01"
        await eventually(lambda: any(p.stat().st_size > 0 for p in partials.rglob("*.part")), 20)
        agent.kill()  # SIGKILL, in the middle of the download
        agent.wait(10)
        proxy.stall_after = None
        agent = run_tentacle(paths.config, tmp_path / "agent.log")
        done = await wait_task(live, task_id, timeout=60)
        assert done["state"] == "success", done.get("error")
        log = await texts(live, task_id, "db-01")
        assert any("acquiring again" in line for line in log), log
        ranges = [line for line in site.mirror.requests(".tar.gz") if line.status == 206]
        assert ranges, "the second download did not resume from the partial"
        [cached] = _cached(tentacles, "db-01")
        assert cached.name == hashlib.sha512(cached.read_bytes()).hexdigest()  # the cache is intact
        assert marker.read_text() == "x\n"  # the step ran once
    finally:
        agent.kill()
        agent.wait(10)
        await proxy.stop()


async def test_cancelling_a_task_stops_its_pushes(site: Site, tentacles: Tentacles) -> None:
    """A push still running when its task is cancelled is stopped, not left to finish."""
    live = site.live
    await tentacles.register("web-01", "listening", roles=("web",))
    await tentacles.start("web-01")
    await eventually(lambda: live.online("web-01"), 10)
    sending, stopped = asyncio.Event(), asyncio.Event()

    async def slow_send(*_: Any, **__: Any) -> int:
        sending.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return 0

    live.server.pusher._send = slow_send  # type: ignore[method-assign]
    web = {**step("Web", "echo never"), "package": {"id": WEB}}
    await apply(live, {"name": "Slow", "steps": [web]})
    task_id = await deploy(live, "Slow", await release(live, "Slow"))
    await asyncio.wait_for(sending.wait(), 10)
    status, _ = await live.api("POST", f"/api/Default/tasks/{task_id}/cancel/v1", {})
    assert status == 202
    done = await wait_task(live, task_id, timeout=15)
    assert done["state"] == "cancelled", done
    await asyncio.wait_for(stopped.wait(), 5)


async def test_a_removed_machine_is_refused_by_a_mirror_that_has_the_crl(
    site: Site, tentacles: Tentacles, tmp_path: Path
) -> None:
    """`machines remove`, then `show-crl` into nginx's ssl_crl: the removed certificate is refused."""
    from server_shim.ca import Authority
    from server_shim.store import machine_rows as machines_store

    live = site.live
    keep = await tentacles.register("web-01", "polling")
    gone = await tentacles.register("db-01", "polling", roles=("db",))
    await live.server.db.run(machines_store.revoke, "Default", "db-01")
    assert site.mirror is not None  # without the CRL, a mirror knows only the CA: it still lets db-01 in
    assert await asyncio.to_thread(head_status, site.mirror, gone) == 200
    crl = tmp_path / "crl.pem"
    revoked = await live.server.db.run(machines_store.revoked_certificates)
    crl.write_bytes(Authority(live.paths.config).crl(revoked))
    mirror = await site.start_mirror(crl=crl)
    assert await asyncio.to_thread(head_status, mirror, keep) == 200
    assert await asyncio.to_thread(head_status, mirror, gone) == 400  # nginx: certificate revoked


def head_status(mirror: Nginx, paths: InstancePaths) -> int:
    """The status nginx answers a tentacle's request for the service index, with its certificate."""
    from tentacle.agent import agent_config as tentacle_config

    names = (tentacle_config.SERVER_CA_FILE, tentacle_config.CERT_FILE, tentacle_config.KEY_FILE)
    ca, cert, key = (tentacle_config.file(paths, name) for name in names)
    conn = http.client.HTTPSConnection(
        "127.0.0.1", mirror.port, context=client_context(ca, cert, key), timeout=5
    )
    try:
        conn.request("GET", "/index.json")
        return conn.getresponse().status
    finally:
        conn.close()
