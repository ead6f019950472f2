"""The layering rules of style.md, checked on the source's import statements."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IO_MODULES = {
    "asyncio",
    "aiohttp",
    "aiofiles",
    "ssl",
    "socket",
    "os",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "subprocess",
    "sqlite3",
    "urllib.request",
    "http",
    "select",
    "selectors",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


def test_protocol_does_no_io() -> None:
    """tentacle/protocol imports no asyncio, aiohttp, ssl, socket, os or file modules."""
    offenders = {}
    for path in sorted((ROOT / "tentacle" / "protocol").glob("*.py")):
        bad = {name for name in _imports(path) if _top(name) & IO_MODULES}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_protocol_imports_only_itself_and_errors_from_the_project() -> None:
    """The pure core depends on nothing else of ours, so server_shim can import it alone."""
    for path in sorted((ROOT / "tentacle" / "protocol").glob("*.py")):
        ours = {n for n in _imports(path) if n.split(".")[0] in ("tentacle", "server_shim")}
        assert all(n.startswith("tentacle.protocol") or n == "tentacle.errors" for n in ours), (path, ours)


def test_tentacle_never_imports_server_shim() -> None:
    """The agent never depends on the server."""
    for path in sorted((ROOT / "tentacle").rglob("*.py")):
        assert not any(n.split(".")[0] == "server_shim" for n in _imports(path)), path


def test_the_checks_see_a_violation(tmp_path: Path) -> None:
    """The import scanner finds both plain and from-imports (so the tests above can fail)."""
    sample = tmp_path / "x.py"
    sample.write_text("import socket\nfrom server_shim.app import Server\nfrom . import local\n")
    assert _imports(sample) == {"socket", "server_shim.app"}
