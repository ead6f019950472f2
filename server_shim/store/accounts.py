"""Secrets the server hands out: registration tokens and API keys, stored hashed.

Both are 160+ bits of randomness, so a plain SHA-256 is the right hash (no need for
a slow password hash); lookups compare hashes, never the secrets themselves.

A registration token may also be made for one machine by name (``token create --machine
NAME``, or ``machines replace NAME`` through the API): only such a token can replace a
machine that exists (``register --force``), and only that one. Any other token, scoped or
not, registers new names only; a scoped token never reaches outside its scope, so it
cannot replace a machine whose environments or roles lie outside it either.

An API key has scopes: ``all`` (the default: the API, deployments, the feed) or any of
``feed:read``, ``feed:push``, ``feed:delete`` (the built-in feed alone; push and delete
include read). A CI job that publishes packages gets ``feed:push`` and cannot deploy.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tentacle.errors import Forbidden, UsageError
from tentacle.protocol.identity import check_name

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ALL = "all"
FEED_READ, FEED_PUSH, FEED_DELETE = "feed:read", "feed:push", "feed:delete"
SCOPES = {
    ALL: "everything: the API, deployments and the feed (the default)",
    FEED_READ: "read the built-in feed",
    FEED_PUSH: "read the built-in feed and push packages",
    FEED_DELETE: "read the built-in feed and delete packages",
}
# Which scopes grant a scope besides itself (and "all", which grants everything).
_GRANTED_BY = {FEED_READ: {FEED_READ, FEED_PUSH, FEED_DELETE}}


class TokenRefused(Forbidden):
    """A registration token that is unknown, expired or used up, or that does not allow this."""


@dataclass(frozen=True)
class Token:
    """What a valid registration token allows: empty lists allow any environment or role."""

    environments: tuple[str, ...]
    roles: tuple[str, ...]
    machine: str | None  # made for this machine alone (it may replace it); None: new names only

    def check_replaces(self, name: str, environments: Sequence[str], roles: Sequence[str]) -> None:
        """Raise TokenRefused unless this token may replace the machine ``name`` that has these."""
        if self.machine != name:
            raise TokenRefused(
                f"name: a machine named {name!r} exists, and replacing it needs a token made for it:"
                f" `server-shim machines replace {name}` (with an operator's API key) or"
                f" `server-shim token create --machine {name}`; a registration token cannot take it over",
                details={"field": "name"},
            )
        claims = (("environments", environments, self.environments), ("roles", roles, self.roles))
        for kind, held, allowed in claims:
            outside = sorted(set(held) - set(allowed)) if allowed else []
            if outside:
                raise TokenRefused(
                    f"{kind}: machine {name!r} has {', '.join(outside)}, outside this token's"
                    f" {', '.join(allowed)}: the token cannot replace it"
                )


def digest(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_duration(text: str) -> float:
    """'90s', '15m', '24h', '7d' in seconds."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"--expires must look like 30m, 24h or 7d, not {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def create_token(
    conn: sqlite3.Connection,
    uses: int,
    ttl: float,
    environments: Sequence[str] = (),
    roles: Sequence[str] = (),
    machine: str | None = None,
) -> str:
    """A new registration token valid for `uses` registrations within `ttl` seconds.

    Non-empty `environments` or `roles` limit what a machine registered with it may claim:
    a stolen token then cannot put a machine into Production with every role. A `machine`
    token registers that name alone, and may replace the machine of that name.
    """
    if not 1 <= uses <= 100_000:
        raise UsageError("--uses must be 1-100000")
    named = [("machine", [machine])] if machine is not None else []
    for kind, names in (("environment", environments), ("role", roles), *named):
        for name in names:
            try:
                check_name(kind, name)
            except ValueError as exc:
                raise UsageError(f"--{kind}: {exc}") from exc
    token = "TOK-" + secrets.token_urlsafe(24)
    now = time.time()
    conn.execute(
        "INSERT INTO tokens (token_hash, uses_left, expires_at, created_at, environments, roles, machine)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            digest(token),
            uses,
            now + ttl,
            now,
            json.dumps(sorted(set(environments))),
            json.dumps(sorted(set(roles))),
            machine,
        ),
    )
    return token


def check_token(
    conn: sqlite3.Connection,
    token: str,
    environments: Sequence[str] = (),
    roles: Sequence[str] = (),
    name: str | None = None,
    *,
    use: bool = False,
) -> Token:
    """What the token allows; TokenRefused unless it can register now, these claims and this name.
    With ``use``, one use is counted (call so in the transaction that registers the machine)."""
    row = conn.execute(
        "SELECT uses_left, expires_at, environments, roles, machine FROM tokens WHERE token_hash = ?",
        (digest(token),),
    ).fetchone()
    if row is None:
        raise TokenRefused("token: unknown registration token")
    if row["expires_at"] < time.time():
        raise TokenRefused("token: the registration token has expired")
    if row["uses_left"] < 1:
        raise TokenRefused("token: the registration token has been used up")
    for kind, claimed, allowed in (
        ("environments", environments, json.loads(row["environments"])),
        ("roles", roles, json.loads(row["roles"])),
    ):
        outside = sorted(set(claimed) - set(allowed)) if allowed else []
        if outside:
            raise TokenRefused(
                f"{kind}: this token may register only {', '.join(allowed)}, not {', '.join(outside)}"
            )
    machine = row["machine"]
    if machine is not None and name is not None and name != machine:
        raise TokenRefused(
            f"name: this token was made for machine {machine!r} and cannot register {name!r}",
            details={"field": "name"},
        )
    if use:
        conn.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE token_hash = ?", (digest(token),))
    return Token(tuple(json.loads(row["environments"])), tuple(json.loads(row["roles"])), machine)


@dataclass(frozen=True)
class ApiKey:
    """A valid API key: its name and what it may do (`SCOPES`)."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """True when the key has `scope`, or a scope that includes it."""
        return ALL in self.scopes or bool(self.scopes & _GRANTED_BY.get(scope, {scope}))

    def shown_scopes(self) -> str:
        """The scopes, as `api-key create --scope` takes them."""
        return ", ".join(sorted(self.scopes))


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """The scopes without duplicates, sorted; UsageError naming an unknown one."""
    for scope in scopes:
        if scope not in SCOPES:
            known = ", ".join(f"{name} ({what})" for name, what in SCOPES.items())
            raise UsageError(f"--scope {scope!r}: unknown; use one of {known}")
    return tuple(sorted(set(scopes))) or (ALL,)


def create_api_key(conn: sqlite3.Connection, name: str, scopes: Sequence[str] = (ALL,)) -> str:
    """A new API key under `name` (replacing any key of that name), limited to `scopes`."""
    granted = check_scopes(scopes)
    key = "API-" + secrets.token_urlsafe(30)
    conn.execute(
        "INSERT INTO api_keys (name, key_hash, created_at, scopes) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET key_hash = excluded.key_hash,"
        " created_at = excluded.created_at, scopes = excluded.scopes",
        (name, digest(key), time.time(), json.dumps(list(granted))),
    )
    return key


def api_key(conn: sqlite3.Connection, key: str) -> ApiKey | None:
    """The API key's name and scopes, or None when it is not valid."""
    row = conn.execute("SELECT name, scopes FROM api_keys WHERE key_hash = ?", (digest(key),)).fetchone()
    return None if row is None else ApiKey(str(row["name"]), frozenset(json.loads(row["scopes"])))
