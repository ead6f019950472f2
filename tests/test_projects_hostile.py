"""Projects and releases given hostile input on a real server over TLS: raw bodies that are
not documents, bodies over the limit, and mutations of valid ones: each a 4xx, nothing
created, never a 5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.hostile import paths, replaced
from tests.process_helpers import example
from tests.projects_helpers import PROJECT, WEB, MiB, Shim, error_of
from tests.projects_helpers import released as released
from tests.projects_helpers import shim as shim

# --- hostile bodies ------------------------------------------------------------------------

RAW_BODIES = {
    "malformed": b'{"name": "OctoPetShop", "steps": [',
    "trailing garbage": b'{"name": "OctoPetShop"} {}',
    "empty": b"",
    "array": b"[]",
    "string": b'"OctoPetShop"',
    "invalid UTF-8": b'{"name": "Octo\xff\xfePetShop"}',
    "lone surrogate in a value": b'{"projectName": "\\ud800", "name": "\\udfff", "releaseVersion": "1.0.0"}',
    "lone surrogate as a key": b'{"\\ud800": 1, "projectName": "OctoPetShop", "releaseVersion": "1.0.0"}',
    "lone surrogate in a step": b'{"steps": [{"name": "\\ud800", "roles": ["web"], "script": null}]}',
    "lone surrogate in a variable": b'{"variables": [{"name": "A", "value": "\\udc00"}]}',
    "deep nesting": b'{"steps": ' + b"[" * 100 + b"]" * 100 + b"}",
    "very deep nesting": b'{"steps": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    "huge number": b'{"projectName": 1e999999, "steps": 1e999999, "releaseVersion": "1"}',
    "huge integer": b'{"steps": [{"name": "a", "roles": ["web"], "timeoutSeconds": ' + b"9" * 5000 + b"}]}",
    "NaN": b'{"projectName": NaN, "releaseVersion": "1.0.0", "steps": NaN}',
    "null": b"null",
}
ROUTES = [("PUT", f"/api/Default/projects/{PROJECT}/v1"), ("POST", "/api/Default/releases/create/v1")]


@pytest.mark.parametrize("route", ROUTES, ids=["project", "release"])
async def test_hostile_bodies_are_4xx_and_create_nothing(shim: Shim, route: tuple[str, str]) -> None:
    """Malformed JSON, bad UTF-8, lone surrogates, deep nesting, odd numbers: each a 4xx, nothing stored."""
    for name, data in RAW_BODIES.items():
        status, answer = await shim.send(*route, data=data)
        assert 400 <= status < 500, (name, status, answer)
        error_of(answer)
    assert await shim.counts() == (0, 0)


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a chunked body (no Content-Length for the server to check first)."""
    for start in range(0, len(data), 256 * 1024):
        yield data[start : start + 256 * 1024]


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
@pytest.mark.parametrize("route", ROUTES, ids=["project", "release"])
async def test_a_3_mib_body_is_413(shim: Shim, route: tuple[str, str], chunked: bool) -> None:
    """A body over the 2 MiB limit, announced or not, is refused with 413 and nothing is stored."""
    data = b'{"name": "' + b"x" * (3 * MiB) + b'"}'
    status, answer = await shim.send(*route, data=_chunked(data) if chunked else data)
    assert status == 413
    assert "request body over" in error_of(answer)
    assert await shim.counts() == (0, 0)


HOSTILE_VALUES: list[Any] = [
    None, 0, -1, 2**70, 1.5, True, "", "x", "\ud800", "\x00", "y" * 5000, [], [None], [[]], {}, {"": None},
]  # fmt: skip


async def test_no_mutation_of_a_valid_document_gives_a_5xx(shim: Shim) -> None:
    """Every value of the process document swapped for every hostile value: never a 5xx."""
    doc = example()
    for path in paths(doc):
        for value in HOSTILE_VALUES:
            status, answer = await shim.apply(replaced(doc, path, value), "Fuzz")
            assert status < 500, (path, value, answer)
            if status >= 400:
                error_of(answer)


async def test_no_mutation_of_a_release_request_gives_a_5xx(released: Shim) -> None:
    """Every value of a release request swapped for every hostile value: never a 5xx."""
    body = {"projectName": PROJECT, "releaseVersion": "1.0.0", "packageVersions": {WEB: "1.0.0"}}
    for path in paths(body):
        for value in HOSTILE_VALUES:
            status, answer = await released.release(replaced(body, path, value))
            assert status < 500, (path, value, answer)
            if status >= 400:
                error_of(answer)
