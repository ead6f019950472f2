"""The README and docs/ point at things that exist: tests by name, files, links and anchors.

The security model and the other long pages cite a test for each claim
(``tests/test_x.py::test_name``); a renamed or deleted test would leave the claim without
its proof, silently. This reads the Markdown and the test files' syntax trees only: no
imports, no network.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
TEST_REFERENCE = re.compile(r"\b(tests/[\w/]+\.py)(?:::(\w+))?")
# A path into the repository, not one inside an instance (`.demo/ports`, `<state>/tasks/...`).
REPO_PATH = re.compile(
    r"(?<![\w./<>-])((?:tentacle|server_shim|rigs|bench|tools|systemd|demo|docs)/[\w/.-]*\w)"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+ (.+)$", re.MULTILINE)


@cache
def _functions(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(), str(path))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, kinds))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in HEADING.findall(page.read_text())}


def _test_reference_problems(page: Path, text: str) -> list[str]:
    problems = []
    for match in TEST_REFERENCE.finditer(text):
        path, name = ROOT / match[1], match[2]
        if not path.is_file():
            problems.append(f"{page.name}: {match[1]} does not exist")
        elif name and name not in _functions(path):
            problems.append(f"{page.name}: {match[1]} has no function {name}")
    return problems


def _link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for link in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto: ...: not ours to check here
            continue
        target, _, anchor = link.partition("#")
        resolved = (page.parent / target).resolve() if target else page
        if not resolved.exists():
            problems.append(f"{page.name}: link {link} leads nowhere")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            problems.append(f"{page.name}: link {link} names no heading of {resolved.name}")
    return problems


def _path_problems(page: Path, text: str) -> list[str]:
    return [
        f"{page.name}: {path} does not exist"
        for path in REPO_PATH.findall(text)
        if "*" not in path and not (ROOT / path).exists()
    ]


def test_every_test_file_link_and_path_the_docs_cite_exists() -> None:
    """Each cited test function, relative link, anchor and repository path resolves."""
    problems = []
    for page in PAGES:
        text = page.read_text()
        problems += _test_reference_problems(page, text)
        problems += _link_problems(page, text)
        problems += _path_problems(page, text)
    assert not problems, "\n".join(problems)


def test_the_checker_sees_a_wrong_test_name_and_a_broken_link() -> None:
    """A reference to a missing test and a link to a missing page are both reported."""
    page = ROOT / "README.md"
    text = "`tests/test_docs_links.py::test_that_is_not_there` and [gone](docs/gone.md)"
    assert _test_reference_problems(page, text) == [
        "README.md: tests/test_docs_links.py has no function test_that_is_not_there"
    ]
    assert _link_problems(page, text) == ["README.md: link docs/gone.md leads nowhere"]
