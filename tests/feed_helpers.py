"""Helpers for feed tests: package files (nupkg, zip, tar.gz), a feed store on a real database,
and HTTPS reads of a live server's feed."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import ssl
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from server_shim import server_config
from server_shim.store import feed_store as feed
from server_shim.store.database import Database
from tentacle.net.tls import client_context
from tentacle.protocol.plan import PackageRef
from tests.conftest import Identity, LiveServer

# --- package files ---------------------------------------------------------------------------


def nuspec(package_id: str, version: str) -> bytes:
    """A minimal .nuspec in the current schema namespace."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">'
        f"<metadata><id>{package_id}</id><version>{version}</version><authors>me</authors></metadata>"
        "</package>"
    ).encode()


def make_nupkg(path: Path, package_id: str, version: str, payload: bytes = b"hello") -> Path:
    """A real .nupkg: a zip with a root .nuspec and one content file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{package_id}.nuspec", nuspec(package_id, version))
        archive.writestr("content/readme.txt", payload)
    return path


def make_zip(path: Path, payload: bytes = b"hello") -> Path:
    """A real zip with one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", payload)
    return path


def make_tar_gz(path: Path, payload: bytes = b"hello") -> Path:
    """A real gzip-compressed tar with one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("readme.txt")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    return path


def sha512_of(path: Path) -> str:
    """The hex SHA-512 of a file."""
    return hashlib.sha512(path.read_bytes()).hexdigest()


@dataclass
class Store:
    """A database and feed folder, and a folder to build package files in."""

    db: Database
    feed_dir: Path
    src: Path

    def push(self, path: Path) -> PackageRef:
        """Push one file into this feed."""
        return feed.push(self.db, self.feed_dir, path)


@pytest.fixture
def store(tmp_path: Path, db_location: Path | str) -> Iterator[Store]:
    """An empty built-in feed."""
    db = Database(db_location)
    yield Store(db, tmp_path / "state" / "feed", tmp_path / "src")
    db.close()


def push_versions(store: Store, package_id: str, version_list: list[str]) -> None:
    """Push one small zip per version."""
    for version in version_list:
        store.push(make_zip(store.src / f"{package_id}.{version}.zip", version.encode()))


# --- reads over HTTPS from a live server -------------------------------------------------------


def _context(live: LiveServer, identity: Identity) -> ssl.SSLContext:
    return client_context(live.paths.config / server_config.CA_CERT, identity.cert, identity.key)


@dataclass
class Answer:
    """An HTTP response, read."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


async def get(url: str, tls: ssl.SSLContext, headers: dict[str, str] | None = None) -> Answer:
    """One GET over a fresh connection."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url, ssl=tls, headers=headers or {}) as resp,
    ):
        return Answer(resp.status, resp.headers.copy(), await resp.read())


async def push_live(live: LiveServer, path: Path) -> PackageRef:
    """Push into the running server's feed, as `package push` would."""
    return await asyncio.to_thread(feed.push, live.server.db, feed.store_dir(live.paths.state), path)
