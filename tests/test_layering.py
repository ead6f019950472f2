"""The layering rules of style.md and issue 11, checked on the source's import statements.

- tentacle/protocol does no I/O and imports nothing of ours but itself and the error tree;
- tentacle never imports server_shim; server_shim imports only tentacle.protocol,
  tentacle.common, tentacle.net and tentacle.errors of the agent;
- inside the server, api -> dispatch -> store, never back;
- no import cycles between modules; no two modules share a name;
- no module over 500 lines, no class over 200.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tentacle", "server_shim", "rigs", "bench", "tests")
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
    "threading",
}
SERVER_MAY_USE = ("tentacle.protocol", "tentacle.common", "tentacle.net", "tentacle.errors")
SERVER_LAYERS = {"api": 0, "dispatch": 1, "store": 2}
MODULE_LINES, CLASS_LINES = 500, 200


def _imports(path: Path) -> set[str]:
    """Modules a file imports: ``from a.b import c`` gives ``a.b`` and ``a.b.c``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _top(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _sources(*packages: str) -> Iterable[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def _modules() -> dict[str, Path]:
    return {_module(path): path for path in _sources(*PACKAGES)}


def test_protocol_does_no_io() -> None:
    """tentacle/protocol imports no asyncio, aiohttp, ssl, socket, os, thread or file modules."""
    offenders = {}
    for path in _sources("tentacle/protocol"):
        bad = {name for name in _imports(path) if _top(name) & IO_MODULES}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_protocol_imports_only_itself_and_errors_from_the_project() -> None:
    """The pure core depends on nothing else of ours, so server_shim can import it alone."""
    for path in _sources("tentacle/protocol"):
        ours = {n for n in _imports(path) if n.split(".")[0] in ("tentacle", "server_shim")}
        assert all(n.startswith(("tentacle.protocol", "tentacle.errors")) for n in ours), (path, ours)


def test_tentacle_never_imports_server_shim() -> None:
    """The agent never depends on the server."""
    for path in _sources("tentacle"):
        assert not any(n.split(".")[0] == "server_shim" for n in _imports(path)), path


def test_server_uses_only_the_shared_parts_of_tentacle() -> None:
    """server_shim takes the protocol, common, net and the error tree from tentacle, nothing else."""
    offenders = {}
    for path in _sources("server_shim"):
        bad = {
            n
            for n in _imports(path)
            if n.startswith("tentacle.") and not n.startswith(SERVER_MAY_USE) and n != "tentacle.__version__"
        }
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_server_layers_import_downwards_only() -> None:
    """api -> dispatch -> store: a lower layer never imports a higher one."""
    offenders = []
    for path in _sources("server_shim"):
        parts = path.relative_to(ROOT / "server_shim").parts
        if len(parts) < 2 or parts[0] not in SERVER_LAYERS:
            continue
        mine = SERVER_LAYERS[parts[0]]
        for name in _imports(path):
            pieces = name.split(".")
            if pieces[0] == "server_shim" and len(pieces) > 1 and SERVER_LAYERS.get(pieces[1], 99) < mine:
                offenders.append((str(path.relative_to(ROOT)), name))
    assert offenders == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    """No module imports, however indirectly, a module that imports it back."""
    modules = _modules()
    graph = {
        name: {n for n in _imports(path) if n in modules and n != name and not name.startswith(n + ".")}
        for name, path in modules.items()
    }
    assert _cycle(graph) is None


def test_no_two_modules_share_a_name() -> None:
    """A module's name alone says where it is: no base name appears twice in the tree."""
    seen: dict[str, list[str]] = {}
    for path in _sources(*PACKAGES, "demo"):
        if path.name not in ("__init__.py", "__main__.py", "conftest.py"):
            seen.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


def _oversized(path: Path) -> list[str]:
    """What in ``path`` is over the size limits: the module itself, or any class in it."""
    text = path.read_text()
    lines = len(text.splitlines())
    found = [f"{path.name}: {lines} lines"] if lines > MODULE_LINES else []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.ClassDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > CLASS_LINES:
                found.append(f"{path.name}: class {node.name} is {length} lines")
    return found


def test_no_module_over_500_lines_and_no_class_over_200() -> None:
    """Every module of the tree, tests included, is at most 500 lines and every class at most 200."""
    assert [problem for path in _sources(*PACKAGES) for problem in _oversized(path)] == []


def test_the_checks_see_a_violation(tmp_path: Path) -> None:
    """The import scanner and the cycle finder see what they look for (so the tests above can fail)."""
    sample = tmp_path / "x.py"
    sample.write_text("import socket\nfrom server_shim.app import Server\nfrom . import local\n")
    assert _imports(sample) == {"socket", "server_shim.app", "server_shim.app.Server"}
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    big = tmp_path / "big.py"
    big.write_text("class Big:\n" + "    x = 1\n" * CLASS_LINES + "\n" * (MODULE_LINES - CLASS_LINES))
    assert _oversized(big) == [
        f"big.py: {MODULE_LINES + 1} lines",
        f"big.py: class Big is {CLASS_LINES + 1} lines",
    ]
