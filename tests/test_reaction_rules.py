"""The pure rules of reactions: documents, matching, templates, retries, addresses, redirects."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle.protocol.delivery_rules import (
    Schedule,
    address_refusal,
    http_verdict,
    next_attempt_at,
    redirect_allowed,
    retry_after_seconds,
)
from tentacle.protocol.process import Variable
from tentacle.protocol.reactions import Event, ReactionError, matches, parse_reaction
from tentacle.protocol.templates import json_escape, render, render_json, url_escape, values_for

HTTP = {"http": {"url": "https://hooks.example/x"}}


def event(kind: str = "deploymentSucceeded", **fields: Any) -> Event:
    """An event as the store makes them."""
    return Event(seq=7, kind=kind, time="2026-12-01T10:00:00.000Z", space="Default", **fields)


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        ({"trigger": {}, "action": HTTP}, "trigger", "either events"),
        (
            {"trigger": {"events": ["releaseCreated"], "webhook": True}, "action": HTTP},
            "trigger",
            "either events",
        ),
        (
            {"trigger": {"webhook": True}, "action": HTTP},
            "action.http",
            "webhook trigger cannot have an http",
        ),
        (
            {
                "trigger": {"webhook": True, "projects": ["A"]},
                "action": {"deploy": {"projectName": "A", "environmentName": "B"}},
            },
            "trigger",
            "no filters",
        ),
        ({"trigger": {"events": ["releaseCreated"]}, "action": {}}, "action", "exactly one"),
        (
            {"trigger": {"events": ["releaseCreated"]}, "action": {"http": {"url": "ftp://x/"}}},
            "action.http.url",
            "http:// or https://",
        ),
        (
            {"trigger": {"events": ["releaseCreated"]}, "action": {"http": {"url": "https://u:p@x/"}}},
            "action.http.url",
            "credentials",
        ),
        (
            {
                "trigger": {"events": ["releaseCreated"]},
                "action": {"http": {"url": "https://x/", "headers": {"Host": "y"}}},
            },
            "action.http.headers.Host",
            "set by the server",
        ),
        (
            {
                "trigger": {"events": ["releaseCreated"]},
                "action": {"http": {"url": "https://x/", "headers": {"X": "a\r\nB: c"}}},
            },
            "action.http.headers.X",
            "control characters",
        ),
        ({"trigger": {"events": ["nope"]}, "action": HTTP}, "trigger.events[0]", "got 'nope'"),
        (
            {
                "trigger": {"events": ["releaseCreated"]},
                "action": {"script": {"syntax": "perl", "body": "1"}},
            },
            "action.script.syntax",
            "got 'perl'",
        ),
        ({"name": "other", "trigger": {"events": ["releaseCreated"]}, "action": HTTP}, "name", "must match"),
    ],
)
def test_documents_refused_name_the_path(doc: dict[str, Any], path: str, words: str) -> None:
    """Each broken rule is a 400 whose first problem names its path."""
    with pytest.raises(ReactionError) as refused:
        parse_reaction(doc, "r")
    assert refused.value.problems[0][0].startswith(path), refused.value.problems
    assert words in refused.value.message, refused.value.message


def test_a_good_document_keeps_its_defaults() -> None:
    """Method POST, 10 s timeout, 24 h of retries, private networks refused, secret left unset."""
    reaction = parse_reaction({"trigger": {"events": ["releaseCreated"]}, "action": HTTP}, "r")
    http = reaction.action.http
    assert http is not None and (http.method, http.timeout_seconds, http.retry_for_seconds) == (
        "POST",
        10,
        86400,
    )
    assert http.allow_private_networks is False and reaction.action.kind == "http"


def test_filters_narrow_strictly() -> None:
    """A filter lets through only events that carry one of its values."""
    doc = {
        "trigger": {"events": ["deploymentSucceeded", "machineOnline"], "environments": ["Prod"]},
        "action": HTTP,
    }
    trigger = parse_reaction(doc, "r").trigger
    assert matches(trigger, event(environment_names=("Prod",)), "r")
    assert not matches(trigger, event(environment_names=("Dev",)), "r")
    assert not matches(trigger, event("releaseCreated", environment_names=("Prod",)), "r")
    roles = parse_reaction(
        {"trigger": {"events": ["machineOnline"], "roles": ["web"]}, "action": HTTP}, "r"
    ).trigger
    assert matches(roles, event("machineOnline", roles=("db", "web")), "r")
    assert not matches(roles, event("machineOnline"), "r")
    projects = parse_reaction(
        {"trigger": {"events": ["machineOnline"], "projects": ["A"]}, "action": HTTP}, "r"
    ).trigger
    assert not matches(projects, event("machineOnline", roles=("web",)), "r")


def test_a_reaction_never_takes_its_own_failure() -> None:
    """reactionFailed of a reaction does not set it off; a failure about a failure sets off nothing."""
    trigger = parse_reaction({"trigger": {"events": ["reactionFailed"]}, "action": HTTP}, "a").trigger
    assert not matches(trigger, event("reactionFailed", details={"reaction": "a", "chain": 0}), "a")
    assert matches(trigger, event("reactionFailed", details={"reaction": "b", "chain": 0}), "a")
    assert not matches(trigger, event("reactionFailed", details={"reaction": "b", "chain": 1}), "a")


def test_templates_fill_built_ins_and_plain_variables_only() -> None:
    """Built-in names, then variables scoped to the event; a sensitive name stays as written."""
    variables = [
        Variable(name="Channel", value="#ops"),
        Variable(name="Channel", value="#prod-ops", environments=("Prod",)),
        Variable(name="Token", value="t0ken", sensitive=True),
        Variable(name="Token", value="visible?", environments=("Prod",)),
    ]
    happened = event(project_name="Shop", release_version="1.2.3", environment_names=("Prod",), task_id="T-1")
    values = values_for(happened, variables, reaction="r", delivery_id="d")
    text = "#{Project.Name} #{Release.Version} to #{Environment.Name} in #{Channel} #{Token} #{Nope}"
    text += " #{Tenant.Name}."
    assert render(text, values) == "Shop 1.2.3 to Prod in #prod-ops #{Token} #{Nope} ."
    assert values["Event.Id"] == "7" and values["Delivery.Id"] == "d" and values["Task.Id"] == "T-1"


@given(st.text())
def test_json_escaped_values_keep_the_body_json(value: str) -> None:
    """Any value filled into a JSON string of a JSON body leaves valid JSON holding that value."""
    import json

    body = render('{"text": "#{V}"}', {"V": value}, json_escape)
    assert json.loads(body) == {"text": value}


def test_json_bodies_and_urls() -> None:
    """A JSON value's strings are filled (not its keys); a URL gets what it cannot hold encoded."""
    assert render_json({"#{A}": ["#{A}", 1, None]}, {"A": 'x"y'}) == {"#{A}": ['x"y', 1, None]}
    assert (
        render("https://x/#{A}?v=#{B}", {"A": "a b", "B": "1.0+é"}, url_escape)
        == "https://x/a%20b?v=1.0+%C3%A9"
    )


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        *[(200, "delivered"), (204, "delivered"), (302, "final"), (400, "final"), (401, "final")],
        *[(404, "final"), (408, "retry"), (429, "retry"), (500, "retry"), (503, "retry"), (410, "final")],
    ],
)
def test_statuses(status: int, verdict: str) -> None:
    """2xx delivered; 408, 429 and 5xx retried; every other status final."""
    assert http_verdict(status) == verdict


def test_backoff_grows_with_jitter_and_stops_at_the_window() -> None:
    """Delays double from 1 s (each in [d/2, d]) up to an hour; nothing is planned past the window."""
    schedule = Schedule()
    assert [schedule.delay(n, 0.999) for n in (1, 2, 3)] == pytest.approx([1.0, 2.0, 4.0], rel=0.01)
    assert schedule.delay(3, 0.0) == 2.0 and schedule.delay(40, 0.999) == pytest.approx(3600, rel=0.01)
    at = next_attempt_at(attempt=1, first_at=0, now=10, retry_for=86400, retry_after=None, rand=0.5)
    assert at == 10.75
    assert (
        next_attempt_at(attempt=1, first_at=0, now=86399.5, retry_for=86400, retry_after=None, rand=0.5)
        is None
    )
    assert next_attempt_at(attempt=9, first_at=0, now=10, retry_for=86400, retry_after=120, rand=0.9) == 130


def test_retry_after_in_seconds_or_as_a_date() -> None:
    """Retry-After takes seconds or an HTTP date; anything else is ignored."""
    assert retry_after_seconds("120", 0) == 120
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10
    assert retry_after_seconds("soon", 0) is None and retry_after_seconds(None, 0) is None
    assert retry_after_seconds("99999999", 0) == 86400


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:10.0.0.1", "embeds"),
        ("2002:7f00:1::", "embeds"),
        ("0.0.0.0", "not a unicast"),
        ("224.0.0.1", "not a unicast"),
        ("::7f00:1", "reserved"),
    ],
)
def test_addresses(address: str, refused: str | None) -> None:
    """Only global unicast addresses pass unless private networks are allowed."""
    found = address_refusal(address, False)
    assert (found is None) if refused is None else (found is not None and refused in found), found
    if refused not in (None, "not a unicast"):
        assert address_refusal(address, True) is None


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("https://a.example/x", "https://a.example/y", True),
        ("https://a.example/x", "https://A.EXAMPLE:443/y", True),
        ("http://a.example/x", "https://a.example/y", True),
        ("https://a.example/x", "http://a.example/y", False),
        ("https://a.example/x", "https://b.example/y", False),
        ("https://a.example/x", "https://a.example:8443/y", False),
        ("http://a.example:8080/x", "https://a.example/y", True),
    ],
)
def test_redirects(source: str, target: str, allowed: bool) -> None:
    """A redirect stays on its host (and port), and never goes down from https."""
    assert redirect_allowed(source, target) is allowed
