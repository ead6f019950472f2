"""Templates of a reaction's request: ``#{Release.Version}``, ``#{Project.Name}`` and the rest.

`values_for` gives the values an event offers: the built-in names below (empty when the
event lacks them), then the project's variables by name, each as the event's environment,
roles and machine scope it. A variable with any sensitive value is never offered: its
template stays as written, so a secret cannot leave the server in a request. A name that
nothing offers stays as written too (``#{Typo}`` shows in what the receiver gets).

Filling is text substitution with an escape chosen by where the text goes: JSON string
contents in a JSON body (`json_escape`), characters a URL cannot hold in a URL
(`url_escape`), control characters dropped in a header (`header_escape`). A body given as
a JSON value has its strings filled without escaping (it is encoded afterwards). Pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

from tentacle.protocol.process import Variable
from tentacle.protocol.reactions import Event

_TOKEN = re.compile(r"#\{([^{}\r\n]{1,200})\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL_SAFE: Final = ":/?#[]@!$&'()*+,;=%~"
BUILT_IN: Final = (
    "Event.Kind",
    "Event.Id",
    "Event.Time",
    "Space.Name",
    "Project.Name",
    "Release.Version",
    "Environment.Name",
    "Machine.Name",
    "Task.Id",
    "Task.State",
    "Tenant.Name",
    "Package.Id",
    "Package.Version",
    "Reaction.Name",
    "Delivery.Id",
    "Error",
)


def render(text: str, values: Mapping[str, str], escape: Callable[[str], str] | None = None) -> str:
    """``text`` with each ``#{Name}`` that ``values`` has replaced (escaped by ``escape``)."""

    def one(found: re.Match[str]) -> str:
        value = values.get(found.group(1).strip())
        if value is None:
            return found.group(0)
        return escape(value) if escape is not None else value

    return _TOKEN.sub(one, text)


def render_json(value: Any, values: Mapping[str, str]) -> Any:
    """A JSON value with the templates of every string (not key) filled."""
    if isinstance(value, str):
        return render(value, values)
    if isinstance(value, dict):
        return {key: render_json(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [render_json(item, values) for item in value]
    return value


def json_escape(text: str) -> str:
    """``text`` as the inside of a JSON string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def url_escape(text: str) -> str:
    """``text`` with what a URL cannot hold (spaces, quotes, non-ASCII) percent-encoded."""
    return quote(text, safe=_URL_SAFE)


def header_escape(text: str) -> str:
    """``text`` fit for a header value: control characters (CR, LF) become spaces."""
    return _CONTROL.sub(" ", text)


def values_for(
    event: Event, variables: Sequence[Variable] = (), *, reaction: str = "", delivery_id: str = ""
) -> dict[str, str]:
    """What templates may name for this event: the built-in names, then non-sensitive variables."""
    details = event.details
    built = {
        "Event.Kind": event.kind,
        "Event.Id": str(event.seq),
        "Event.Time": event.time,
        "Space.Name": event.space or "",
        "Project.Name": event.project_name or "",
        "Release.Version": event.release_version or "",
        "Environment.Name": ",".join(event.environment_names),
        "Machine.Name": event.machine_name or "",
        "Task.Id": event.task_id or "",
        "Task.State": event.task_state or "",
        "Tenant.Name": event.tenant_name or "",
        "Package.Id": str(details.get("packageId", "")),
        "Package.Version": str(details.get("packageVersion", "")),
        "Reaction.Name": reaction,
        "Delivery.Id": delivery_id,
        "Error": str(details.get("error", "")),
    }
    environment = event.environment_names[0] if event.environment_names else ""
    offered = _variables(variables, environment, event.roles, event.machine_name or "")
    return {**offered, **built}


def _variables(
    variables: Sequence[Variable], environment: str, roles: tuple[str, ...], machine: str
) -> dict[str, str]:
    """Each variable name with its best-scoped value; names with a sensitive value are left out."""
    secret = {v.name for v in variables if v.sensitive}
    best: dict[str, tuple[int, str]] = {}
    for variable in variables:
        if variable.name in secret:
            continue
        score = variable.specificity(environment, roles, machine)
        if score is not None and (variable.name not in best or score > best[variable.name][0]):
            best[variable.name] = (score, variable.value)
    return {name: value for name, (_, value) in best.items()}
