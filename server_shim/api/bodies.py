"""The request and answer bodies of the operator API, as typed wire structs.

Each request body is a `Body`: msgspec checks its types, lengths and unknown fields as
it parses (``environmentNames[1]: expected a string, got an integer``), then `check`
refuses what a type cannot say (a machine name's characters, an endpoint's scheme),
naming the path the same way. Each answer is a `Wire` struct that the route encodes;
field names travel in camelCase, exactly as design.md spells them.

Bodies that the agent or the process rules own live elsewhere: the process document is
read by `tentacle.protocol.process`, the RPC messages by `tentacle.protocol.messages`.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from server_shim.store.project_rows import MAX_VERSION_CHARS
from server_shim.store.tenants import TagName, Tenant
from tentacle.protocol.channel_rules import DEFAULT_CHANNEL
from tentacle.protocol.identity import check_name
from tentacle.protocol.states import TaskState
from tentacle.protocol.wire import Wire, WireError

MAX_NAMES: Final = 1000
MAX_PACKAGE_VERSIONS: Final = 1000

#: A project, environment, machine or runbook name as a request gives it.
Name = Annotated[str, Meta(min_length=1, max_length=200)]
#: Names of environments or machines: at most 1000 (repeats are dropped by the routes).
Names = Annotated[tuple[Name, ...], Meta(max_length=MAX_NAMES)]
SomeNames = Annotated[tuple[Name, ...], Meta(min_length=1, max_length=MAX_NAMES)]
#: The text of a version; whether it is a NuGet version is the release rules' call.
VersionText = Annotated[str, Meta(min_length=1, max_length=MAX_VERSION_CHARS)]
#: A machine's claims at registration (each is also checked by `check_name`).
Claims = Annotated[tuple[Annotated[str, Meta(max_length=100)], ...], Meta(min_length=1, max_length=100)]
MachineMode = Literal["listening", "polling"]
TenantedDeployment = Literal["untenanted", "tenanted", "both"]
#: A time with its zone, ISO 8601 (``2026-12-01T18:00:00Z``, ``...+01:00``).
Moment = Annotated[datetime, Meta(tz=True)]
TagNames = Annotated[tuple[TagName, ...], Meta(max_length=MAX_NAMES)]


def refusal(path: str, problem: str) -> WireError:
    """A 400 for ``path`` (``environments[1]``), worded like msgspec's own refusals."""
    return WireError(f"{path}: {problem}", details={"path": path})


class Body(Wire, frozen=True):
    """A request body: typed by its fields, then checked by `check` where types cannot say."""

    def check(self) -> None:
        """Raise `WireError` naming the path of the first problem types did not catch."""


# --- machines ----------------------------------------------------------------------------


class RegistrationRequest(Body, frozen=True):
    """``POST /api/machines/register/v1``: a token and a CSR, and what the machine claims to be."""

    token: Annotated[str, Meta(min_length=1, max_length=200)]
    csr: Annotated[str, Meta(min_length=1)]  # the CA bounds and parses it (`Authority.sign`)
    name: Annotated[str, Meta(max_length=100)]
    mode: MachineMode
    environments: Claims
    roles: Claims
    endpoint: Annotated[str, Meta(max_length=300)] | None = None
    force: bool = False
    space: Annotated[str, Meta(min_length=1, max_length=100)] = "Default"
    tenants: Annotated[tuple[Name, ...], Meta(max_length=MAX_NAMES)] = ()
    tenant_tags: TagNames = ()
    tenanted_deployment: TenantedDeployment | None = None  # default: tenanted when it names any

    def tenancy(self) -> TenantedDeployment:
        """How the machine takes part in tenanted deployments (given, else by what it names)."""
        if self.tenanted_deployment is not None:
            return self.tenanted_deployment
        return "tenanted" if self.tenants or self.tenant_tags else "untenanted"

    def check(self) -> None:
        """Names of the allowed characters; a listening machine gives its https:// endpoint."""
        _check_name("name", "name", self.name)
        if self.tenanted_deployment == "untenanted" and (self.tenants or self.tenant_tags):
            path = "tenants" if self.tenants else "tenantTags"
            raise refusal(
                path, "an untenanted machine serves no tenants (use tenantedDeployment tenanted or both)"
            )
        if self.tenanted_deployment in ("tenanted", "both") and not (self.tenants or self.tenant_tags):
            raise refusal(
                "tenantedDeployment", f"{self.tenanted_deployment}, but no tenants or tenantTags given"
            )
        for kind, values in (("environment", self.environments), ("role", self.roles)):
            for index, value in enumerate(values):
                _check_name(f"{kind}s[{index}]", kind, value)
        if self.mode != "listening":
            return
        if self.endpoint is None:
            raise refusal("endpoint", "required for a listening machine")
        if not self.endpoint.startswith("https://"):
            raise refusal("endpoint", "must be an https:// URL")


def _check_name(path: str, kind: str, value: str) -> None:
    try:
        check_name(kind, value)
    except ValueError as exc:
        raise refusal(path, str(exc)) from exc


class MachineView(Wire, frozen=True):
    """An entry of the machines list (design.md), also the registration answer's ``machine``."""

    name: str
    thumbprint: str
    mode: str  # listening or polling
    endpoint: str | None
    environments: tuple[str, ...]
    roles: tuple[str, ...]
    status: Literal["online", "offline"]
    last_seen: str | None
    space: str = "Default"
    tenants: tuple[str, ...] = ()
    tenant_tags: tuple[str, ...] = ()
    tenanted_deployment: str = "untenanted"


class RegistrationAnswer(Wire, frozen=True):
    """What a registered machine needs: its certificate, the CA, how to reach the server, and
    the public half of the key that signs its plans (``ed25519:<base64>``), to pin."""

    certificate: str
    ca_certificate: str
    server_thumbprint: str
    polling_url: str
    machine: MachineView
    signing_key: str
    polling_urls: tuple[str, ...] = ()  # every live node's polling URL: a polling tentacle keeps each


class ListeningPort(Body, frozen=True):
    """``POST /api/machines/listening-port/v1``: the port a listening tentacle took at start."""

    port: Annotated[int, Meta(ge=1, le=65535)]


class EndpointMoved(Wire, frozen=True):
    """The answer to a port report: the endpoint the server uses from now on."""

    name: str
    endpoint: str | None


class MachineList(Wire, frozen=True):
    """``GET /api/{space}/machines/v1``."""

    items: list[MachineView]


class ReplacementRequest(Body, frozen=True):
    """``POST /api/{space}/machines/{name}/replace/v1``: how long the replacement token lives."""

    expires: Annotated[str, Meta(min_length=1, max_length=20)] = "1h"


class ReplacementToken(Wire, frozen=True):
    """A one-use token that may replace one machine (``register --force``), within its claims."""

    machine_name: str
    token: str
    expires_at: str
    environments: tuple[str, ...]
    roles: tuple[str, ...]


class MachineRemoved(Wire, frozen=True):
    """``DELETE /api/{space}/machines/{name}/v1``: the machine and the certificate revoked."""

    name: str
    revoked_thumbprint: str


# --- signing keys ----------------------------------------------------------------------------


class SigningKeyRotated(Wire, frozen=True):
    """``POST /api/signing-keys/rotate/v1``: the new current key, and how many machines lack it yet."""

    key_id: str
    public_key: str
    previous_key_id: str
    pending_machines: int


class SigningKeyView(Wire, frozen=True):
    """A signing key the server holds, and how many registered machines pin it."""

    key_id: str
    current: bool
    machines: int


class PendingMachine(Wire, frozen=True):
    """A machine that has not pinned the current key: the key it pins (None: none yet)."""

    space: str
    name: str
    key_id: str | None


class SigningKeyStatus(Wire, frozen=True):
    """``GET /api/signing-keys/v1``: the keys held and the machines still to get the current one."""

    current_key_id: str
    public_key: str
    keys: list[SigningKeyView]
    pending: list[PendingMachine]


# --- projects and releases ---------------------------------------------------------------


class ProjectSaved(Wire, frozen=True):
    """``PUT /api/{space}/projects/{name}/v1``: what was stored."""

    name: str
    steps: int
    runbooks: list[str]


class ReleaseRequest(Body, frozen=True):
    """``POST /api/{space}/releases/create/v1``; package ids and versions are the release rules' call.

    Without ``releaseVersion`` the project's version template (or its newest package) makes one.
    """

    project_name: Name
    release_version: VersionText | UnsetType = UNSET
    package_versions: Annotated[dict[str, VersionText], Meta(max_length=MAX_PACKAGE_VERSIONS)] = {}
    channel_name: Name = DEFAULT_CHANNEL
    ignore_channel_rules: bool = False


class ReleaseCreated(Wire, frozen=True):
    """The release as stored: its normalized version, its channel and the exact package versions pinned."""

    project_name: str
    release_version: str
    package_versions: dict[str, str]
    channel_name: str = DEFAULT_CHANNEL


# --- tasks -------------------------------------------------------------------------------


class DeploymentOptions(Body, frozen=True):
    """What both create-deployment routes take besides their targets (all optional)."""

    specific_machine_names: Names = ()
    excluded_machine_names: Names = ()
    skip_step_names: Names = ()
    force_package_redeployment: bool = False
    run_at: Moment | None = None
    no_run_after: Moment | None = None

    def check(self) -> None:
        """A schedule that can happen: noRunAfter after runAt, and not already past."""
        if self.no_run_after is None:
            return
        if self.run_at is not None and self.no_run_after <= self.run_at:
            raise refusal("noRunAfter", "must be after runAt")
        if self.no_run_after.timestamp() <= time.time():
            raise refusal("noRunAfter", "is in the past")

    def times(self) -> tuple[float | None, float | None]:
        """runAt and noRunAfter as epoch seconds."""
        return (
            None if self.run_at is None else self.run_at.timestamp(),
            None if self.no_run_after is None else self.no_run_after.timestamp(),
        )


class DeploymentRequest(DeploymentOptions, frozen=True, kw_only=True):
    """``POST /api/{space}/deployments/create/untenanted/v1`` (``machineNames``: the specific ones)."""

    project_name: Name
    release_version: Name
    environment_names: SomeNames
    machine_names: Names = ()


class TenantedDeploymentRequest(DeploymentOptions, frozen=True, kw_only=True):
    """``POST /api/{space}/deployments/create/tenanted/v1``: tenants by name and by tag filter."""

    project_name: Name
    release_version: Name
    environment_name: Name
    tenant_names: Names = ()
    tenant_tags: TagNames = ()


class TenantTask(Wire, frozen=True):
    """One task of a tenanted deployment."""

    tenant_name: str
    task_id: str


class TenantedCreated(Wire, frozen=True):
    """The answer to a tenanted deployment: one task per tenant."""

    deployments: list[TenantTask]


class RunbookRunRequest(DeploymentOptions, frozen=True, kw_only=True):
    """``POST /api/{space}/runbook-runs/create/v1``; it takes the deployments' options too."""

    project_name: Name
    runbook_name: Name
    environment_names: SomeNames
    machine_names: Names = ()


class TaskCreated(Wire, frozen=True):
    """The answer to a create: the task to follow."""

    task_id: str


class TargetView(Wire, frozen=True):
    """One machine's part in a task: the phase it is in, its state there, and why it failed if it did."""

    machine_name: str
    phase: str
    state: str
    reason: str | UnsetType = UNSET


class TaskView(Wire, frozen=True):
    """``GET /api/{space}/tasks/{taskId}/v1`` (design.md); ``error`` only when there is one."""

    task_id: str
    state: TaskState
    kind: str
    project_name: str
    release_version: str | None
    runbook_name: str | None
    environment_names: list[str]
    created_at: float
    finished_at: float | None
    targets: list[TargetView]
    error: str | UnsetType = UNSET
    tenant_name: str | UnsetType = UNSET
    run_at: str | UnsetType = UNSET
    no_run_after: str | UnsetType = UNSET


class LogLine(Wire, frozen=True):
    """One output line of a task, numbered by ``seq``."""

    seq: int
    time: float
    machine_name: str
    stream: str
    step: str | None
    text: str


class LogPage(Wire, frozen=True):
    """``GET /api/{space}/tasks/{taskId}/log/v1``: lines after ``since``; ``more`` when the page is full."""

    task_id: str
    task_state: TaskState
    items: list[LogLine]
    next_since: int
    more: bool


class CancelAnswer(Wire, frozen=True):
    """``POST /api/{space}/tasks/{taskId}/cancel/v1``: the task's state after the request."""

    task_id: str
    state: str  # a TaskState, or "cancelling" while a running task's targets stop


# --- spaces, tag sets, tenants ------------------------------------------------------------


class SpaceRequest(Body, frozen=True):
    """``POST /api/spaces/v1``: the new space's name (the store checks its characters)."""

    name: Annotated[str, Meta(min_length=1, max_length=100)]


class SpaceView(Wire, frozen=True):
    """A space: its name and its stable id (``Spaces-N``)."""

    name: str
    id: str


class SpaceList(Wire, frozen=True):
    """``GET /api/spaces/v1``."""

    items: list[SpaceView]


class TagSetView(Wire, frozen=True):
    """A tag set with its tags."""

    name: str
    tags: list[str]


class TagSetList(Wire, frozen=True):
    """``GET /api/{space}/tagsets/v1``."""

    items: list[TagSetView]


class TenantList(Wire, frozen=True):
    """``GET /api/{space}/tenants/v1``: every tenant, sensitive values left out."""

    items: list[Tenant]


# --- errors ------------------------------------------------------------------------------


class ErrorDetail(Wire, frozen=True):
    """What went wrong: a stable code, a message naming the field or path, details."""

    code: str
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class ErrorBody(Wire, frozen=True):
    """Every error answer: ``{"error": {"code", "message", "details"}, "ErrorMessage", "Errors"}``.

    ``ErrorMessage`` and ``Errors`` are what Octopus's own clients show of an error (and all
    they show): the same message, and the separate problems when there are several.
    """

    error: ErrorDetail
    error_message: str = msgspec.field(name="ErrorMessage")
    errors: list[str] = msgspec.field(default_factory=list, name="Errors")
