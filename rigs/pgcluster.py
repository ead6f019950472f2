"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests and benchmarks.

Debian's ``postgresql`` package (``/usr/lib/postgresql/<N>/bin``) provides ``initdb`` and
``pg_ctl``; the cluster lives in a fresh folder under the system's temp directory and
listens on a free port of 127.0.0.1 (and a socket in its folder). PostgreSQL refuses to
run as root, so as root the cluster is made and run as the ``postgres`` system user
(``runuser``), and its folder is handed to that user. ``trust`` authentication on
loopback: the cluster is private to the test run, and every URL names the ``postgres``
role. The cluster uses the C locale, so text sorts by code point as in SQLite.

    cluster = Cluster.start()
    url = cluster.create_database("t1")   # postgresql://postgres@127.0.0.1:PORT/t1
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rigs.instances import free_ports

RUN_AS = "postgres"


def bin_dir() -> Path:
    """The newest installed PostgreSQL's programs; fails naming the package when none is."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: tools/system-deps.sh test installs 'postgresql'")
    return Path(found[-1]).parent


def _as_owner(argv: list[str]) -> list[str]:
    """``argv`` as the cluster's owner: the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", RUN_AS, "--", *argv]


@dataclass
class Cluster:
    """One running cluster: its folder, port and programs."""

    root: Path
    port: int
    bin: Path

    @classmethod
    def start(cls, parent: str | None = None) -> Cluster:
        """initdb into a new folder and start the server; returns when it takes connections."""
        root = Path(tempfile.mkdtemp(prefix="tentacle-pg-", dir=parent))
        if os.geteuid() == 0:
            owner = pwd.getpwnam(RUN_AS)
            os.chown(root, owner.pw_uid, owner.pw_gid)
        cluster = cls(root, free_ports(1)[0], bin_dir())
        data = root / "data"
        cluster._run(
            str(cluster.bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "--locale=C", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        settings = (
            f"-c listen_addresses=127.0.0.1 -c port={cluster.port} -c unix_socket_directories={root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        cluster._run(
            str(cluster.bin / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
            "-o", settings, "-w", "-t", "60", "start",
        )  # fmt: skip
        return cluster

    def _run(self, *argv: str) -> None:
        done = subprocess.run(_as_owner(list(argv)), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}")

    def url(self, database: str = "postgres") -> str:
        """The URL of one of its databases."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql; returns what it printed (unaligned, tuples only)."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-XAt", "-v", "ON_ERROR_STOP=1", "-c", statement, self.url(database)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout.strip()

    def admin(self, statement: str) -> None:
        """One statement on the ``postgres`` database, outside a transaction (CREATE DATABASE)."""
        import psycopg  # the rig's own connection; psql would cost a process per database

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(statement.encode())

    def create_database(self, name: str, template: str = "") -> str:
        """A new database (empty, or a copy of ``template``); returns its URL."""
        self.admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its connections first."""
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        with contextlib.suppress(RuntimeError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        for _ in range(50):  # the postmaster's children may outlive pg_ctl by a moment
            try:
                shutil.rmtree(self.root)
                return
            except OSError:
                time.sleep(0.1)
