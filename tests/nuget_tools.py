"""Real NuGet clients for the tests: NuGet.exe 5.8 on Mono, and Debian's NuGet 2.8.7.

`make nuget-clients` installs them (Debian's mono-complete and nuget, and NuGet.exe from
the npm registry's nuget-exe package into .tools/); a test that needs one fails, never
skips, when it is missing. Each client runs with its own HOME, so that its caches, its
NuGet.Config and its Mono trust store are the test's alone: the server's CA is made
trusted there with ``cert-sync --user`` (Mono's own tool), never in the machine's store.
Mono does not match IP addresses in certificates, so clients use https://localhost:PORT.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUGET_EXE = ROOT / ".tools" / "node_modules" / "nuget-exe" / "nuget-5.8.0.exe"
INSTALL_HINT = "run `make nuget-clients` (apt: mono-complete nuget npm; npm: nuget-exe@5.8.0)"
CONTENT_TYPES = (
    b'<?xml version="1.0" encoding="utf-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
    b'content-types"><Default Extension="nuspec" ContentType="application/octet" /></Types>'
)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}")
    return found


@dataclass
class NuGet:
    """A NuGet client with its own HOME; `run` returns (exit code, stdout and stderr)."""

    home: Path
    argv: list[str]

    async def run(self, *args: str, cwd: Path | None = None, timeout: float = 180) -> tuple[int, str]:
        """Run one command to its end (in a thread, so the test's server keeps serving)."""
        env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"}
        done = await asyncio.to_thread(
            subprocess.run,
            [*self.argv, *args, "-NonInteractive"],
            cwd=cwd or self.home,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return done.returncode, done.stdout + done.stderr

    async def ok(self, *args: str, cwd: Path | None = None) -> str:
        """Run a command that must succeed; its output."""
        code, output = await self.run(*args, cwd=cwd)
        assert code == 0, f"nuget {' '.join(args)} exited {code}:\n{output}"
        return output


def trusting_home(home: Path, *ca_files: Path) -> Path:
    """A HOME whose Mono trust store holds these CA certificates (and nothing of the machine's)."""
    home.mkdir(parents=True, exist_ok=True)
    for ca in ca_files:
        done = subprocess.run(
            [_tool("cert-sync"), "--user", str(ca)],
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return home


def nuget5(home: Path) -> NuGet:
    """NuGet.exe 5.8 on Mono."""
    if not NUGET_EXE.is_file():
        pytest.fail(f"{NUGET_EXE} is missing: {INSTALL_HINT}")
    return NuGet(home, [_tool("mono"), str(NUGET_EXE)])


def nuget2(home: Path) -> NuGet:
    """Debian's NuGet 2.8.7 (what its `nuget` command runs)."""
    return NuGet(home, [_tool("nuget")])


def source_config(folder: Path, name: str, url: str, key: str | None) -> Path:
    """A nuget.config with one source and, given a key, its credentials (the key as password)."""
    credentials = ""
    if key is not None:
        credentials = (
            f"<packageSourceCredentials><{name}><add key='Username' value='anyone' />"
            f"<add key='ClearTextPassword' value='{key}' /></{name}></packageSourceCredentials>"
        )
    config = folder / "nuget.config"
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "<?xml version='1.0' encoding='utf-8'?><configuration><packageSources><clear />"
        f"<add key='{name}' value='{url}' /></packageSources>{credentials}</configuration>"
    )
    return config


def nuspec(package_id: str, version: str, files: str = "", dependencies: str = "") -> str:
    """A nuspec in NuGet's current namespace."""
    return (
        "<?xml version='1.0' encoding='utf-8'?>"
        "<package xmlns='http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd'><metadata>"
        f"<id>{package_id}</id><version>{version}</version><authors>Tests</authors>"
        f"<description>{package_id} for the NuGet client tests</description><tags>tentacle test</tags>"
        f"{dependencies}</metadata>{files}</package>"
    )


def make_package(
    folder: Path, package_id: str, version: str, content: bytes = b"hello", dependencies: str = ""
) -> Path:
    """A .nupkg laid out as NuGet packs one: a root nuspec, content, [Content_Types].xml."""
    path = folder / f"{package_id}.{version}.nupkg"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{package_id}.nuspec", nuspec(package_id, version, dependencies=dependencies))
        archive.writestr("content/readme.txt", content)
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
    return path


def files_below(root: Path) -> dict[str, bytes]:
    """Every file below root by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
