"""Reactions: events in, actions out. The documents, the events, and which event a trigger takes.

A reaction maps a trigger to an action::

    {"trigger": {"events": ["deploymentSucceeded"], "environments": ["Production"]},
     "action": {"http": {"url": "https://chat.example/hook", "body": {"text": "#{Release.Version} is out"}}}}

A trigger is internal events of some kinds, narrowed by filters, or ``{"webhook": true}``
(``POST /api/{space}/hooks/{name}/v1``). An action is one of ``http`` (an outgoing request),
``script`` (bash or python3 run by the server) and ``deploy`` (the latest release of a
project to an environment). Filters are strict: an event passes a filter only when it
carries that dimension with one of the listed values (a machine event carries its
environments, roles and no project, so ``projects`` never lets one through).

A reaction never reacts to its own ``reactionFailed``, and nothing reacts to the failure of
a delivery that was itself about a failure (`CHAIN_LIMIT`): two reactions that watch each
other's failures cannot loop. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, Meta, UnsetType

from tentacle.protocol.documents import (
    NAME_MAX,
    TEXT,
    DocumentError,
    Names,
    convert_document,
    key_path,
    over_bytes,
)
from tentacle.protocol.wire import Wire

EventKind = Literal[
    "deploymentQueued",
    "deploymentStarted",
    "deploymentSucceeded",
    "deploymentFailed",
    "deploymentCancelled",
    "releaseCreated",
    "machineRegistered",
    "machineOnline",
    "machineOffline",
    "machineRemoved",
    "projectUpdated",
    "packagePushed",
    "reactionFailed",
]
EVENT_KINDS: Final[tuple[str, ...]] = EventKind.__args__  # type: ignore[attr-defined]  # Literal's values
#: The kind a webhook delivery carries (no event of the events list has it).
WEBHOOK_KIND: Final = "webhook"
#: A failure of a delivery about a failure is recorded, and triggers nothing.
CHAIN_LIMIT: Final = 1
MACHINE_KINDS: Final = frozenset({"machineRegistered", "machineOnline", "machineOffline", "machineRemoved"})
MAX_SCRIPT_BYTES: Final = 256 * 1024
MAX_BODY_BYTES: Final = 256 * 1024
MAX_SECRET_CHARS: Final = 1000
MAX_REDIRECTS: Final = 5
RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "x-tentacle-event"}
    | {"x-tentacle-delivery", "x-tentacle-signature"}
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_TEMPLATE = re.compile(r"#\{[^{}\r\n]{1,200}\}")  # as tentacle.protocol.templates fills them
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # in a header value: CR/LF would inject headers

ReactionName = Annotated[
    str, Meta(min_length=1, max_length=NAME_MAX, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
]
Text = Annotated[str, Meta(pattern=TEXT)]
HeaderName = Annotated[str, Meta(min_length=1, max_length=100, pattern=TEXT)]
HeaderValue = Annotated[str, Meta(max_length=8000, pattern=TEXT)]
Seconds = Annotated[float, Meta(ge=1, le=3600)]


class ReactionError(DocumentError):
    """A reaction document with problems (400), each with its path."""


class Trigger(Wire, frozen=True):
    """What sets a reaction off: events of these kinds (narrowed by filters), or a webhook."""

    events: Annotated[tuple[EventKind, ...], Meta(max_length=len(EVENT_KINDS) * 2)] = ()
    webhook: bool = False
    projects: Names = ()
    environments: Names = ()
    tenants: Names = ()
    roles: Names = ()


class HttpAction(Wire, frozen=True):
    """An outgoing request; every text field but the secret is a template."""

    url: Annotated[str, Meta(min_length=1, max_length=4000, pattern=TEXT)]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: Annotated[dict[HeaderName, HeaderValue], Meta(max_length=50)] = {}
    # A text (sent as written, templates filled) or a JSON value (strings filled, then encoded);
    # without one, the event itself is sent as JSON.
    body: Text | dict[str, Any] | list[Any] | None = None
    # Write-only: a GET shows only whether there is one; left out of a PUT, the stored one stays.
    secret: (
        Annotated[str, Meta(min_length=1, max_length=MAX_SECRET_CHARS, pattern=TEXT)] | UnsetType | None
    ) = UNSET
    allow_private_networks: bool = False
    timeout_seconds: Annotated[float, Meta(ge=1, le=300)] = 10.0
    retry_for_seconds: Annotated[float, Meta(ge=0, le=86400)] = 86400.0


class ScriptAction(Wire, frozen=True):
    """A script the server runs, with the event on stdin and in its environment."""

    syntax: Literal["bash", "python3"]
    body: Annotated[str, Meta(min_length=1, pattern=TEXT)]
    timeout_seconds: Seconds = 300.0


class DeployAction(Wire, frozen=True):
    """Deploy the latest release of a project to an environment (to one machine on a machine event)."""

    project_name: Annotated[str, Meta(min_length=1, max_length=NAME_MAX, pattern=TEXT)]
    environment_name: Annotated[str, Meta(min_length=1, max_length=NAME_MAX, pattern=TEXT)]
    release: Literal["latest"] = "latest"


class Action(Wire, frozen=True):
    """Exactly one of the three."""

    http: HttpAction | None = None
    script: ScriptAction | None = None
    deploy: DeployAction | None = None

    @property
    def kind(self) -> str:
        """``http``, ``script`` or ``deploy``."""
        return "http" if self.http else "script" if self.script else "deploy"


class Reaction(Wire, frozen=True):
    """A reaction document (the body of ``PUT /api/{space}/reactions/{name}/v1``)."""

    trigger: Trigger
    action: Action
    name: ReactionName | None = None


class Event(Wire, frozen=True):
    """One recorded event as the API shows it and actions receive it.

    ``seq`` numbers the events of the whole server (0 for a test event of ``reaction fire``);
    ``space`` is None for what belongs to no space (a package of the built-in feed).
    """

    seq: int
    kind: str
    time: str  # ISO 8601 UTC, milliseconds
    space: str | None = None
    project_name: str | None = None
    release_version: str | None = None
    environment_names: tuple[str, ...] = ()
    tenant_name: str | None = None
    machine_name: str | None = None
    task_id: str | None = None
    task_state: str | None = None
    roles: tuple[str, ...] = ()
    details: dict[str, Any] = {}


def parse_reaction(doc: object, name: str) -> Reaction:
    """Decode and check a reaction document for the reaction ``name`` (from the URL)."""
    reaction = convert_document(doc, Reaction, ReactionError)
    problems = list(_problems(reaction, name))
    if problems:
        raise ReactionError(problems)
    return reaction


def _problems(reaction: Reaction, name: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if reaction.name is not None and reaction.name != name:
        found.append(("name", f"must match the reaction name {name!r}"))
    trigger, action = reaction.trigger, reaction.action
    if trigger.webhook == bool(trigger.events):
        found.append(("trigger", "give either events: [kind, ...] or webhook: true"))
    if trigger.webhook and (trigger.projects or trigger.environments or trigger.tenants or trigger.roles):
        found.append(("trigger", "a webhook trigger takes no filters"))
    given = [kind for kind in ("http", "script", "deploy") if getattr(action, kind) is not None]
    if len(given) != 1:
        found.append(("action", "give exactly one of http, script or deploy"))
    if trigger.webhook and action.http is not None:
        found.append(
            ("action.http", "a webhook trigger cannot have an http action (the server would only relay)")
        )
    if action.http is not None:
        found.extend(_http_problems(action.http))
    if action.script is not None and over_bytes(action.script.body, MAX_SCRIPT_BYTES):
        found.append(("action.script.body", f"must be at most {MAX_SCRIPT_BYTES} bytes"))
    return found


def _http_problems(http: HttpAction) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    url = urlsplit(_TEMPLATE.sub("x", http.url))  # a template may fill the host in
    if url.scheme not in ("http", "https") or not url.netloc:
        found.append(("action.http.url", "must be an http:// or https:// URL"))
    elif url.username or url.password:
        found.append(("action.http.url", "must not carry credentials (give an Authorization header)"))
    for header, value in http.headers.items():
        path = key_path("action.http.headers", header)
        if not _HEADER_NAME.match(header):
            found.append((path, "must be a header name (letters, digits and !#$%&'*+.^_`|~-)"))
        elif header.lower() in RESERVED_HEADERS:
            found.append((path, "is set by the server"))
        if _CONTROL.search(value):
            found.append((path, "must not contain control characters (CR, LF)"))
    if http.body is not None and len(msgspec.json.encode(http.body)) > MAX_BODY_BYTES:
        found.append(("action.http.body", f"must be at most {MAX_BODY_BYTES} bytes"))
    return found


def matches(trigger: Trigger, event: Event, reaction: str) -> bool:
    """Whether ``event`` sets off the reaction named ``reaction`` with this trigger."""
    if trigger.webhook or event.kind not in trigger.events:
        return False
    if event.kind == "reactionFailed" and (
        event.details.get("reaction") == reaction or int(event.details.get("chain", 0)) >= CHAIN_LIMIT
    ):
        return False
    if trigger.projects and event.project_name not in trigger.projects:
        return False
    if trigger.environments and not set(event.environment_names) & set(trigger.environments):
        return False
    if trigger.tenants and event.tenant_name not in trigger.tenants:
        return False
    return not trigger.roles or bool(set(event.roles) & set(trigger.roles))


def lease_seconds(action: Action) -> float:
    """How long a node's claim on a delivery holds: longer than any attempt of the action takes."""
    if action.http is not None:
        return action.http.timeout_seconds * (MAX_REDIRECTS + 1) + 60.0
    if action.script is not None:
        return action.script.timeout_seconds + 120.0
    return 300.0


def chain_of(payload: Event) -> int:
    """How deep in failures-about-failures a delivery of ``payload`` is (0: about a plain event)."""
    if payload.kind != "reactionFailed":
        return 0
    return int(payload.details.get("chain", 0)) + 1
