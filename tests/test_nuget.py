"""NuGet version rules: every case of the shared NuGet reference file, then properties.

The reference (shared/reference/nuget-versions.json) holds cases from NuGet's own test
suite and docs. Each section below runs all of its cases; each case's keys other than
its inputs and provenance are facts, and every fact must hold (an unknown fact fails).
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle.errors import TentacleError
from tentacle.protocol.nuget import (
    FloatBehavior,
    InvalidVersion,
    InvalidVersionRange,
    NuGetVersion,
    VersionRange,
    flat_container_index_path,
    flat_container_nupkg_path,
    is_valid_package_id,
    newest,
)

# A copy of shared/reference/nuget-versions.json, kept in the repository so that a checkout alone tests.
REFERENCE_PATH = Path(__file__).resolve().parent / "data" / "nuget-versions.json"
REFERENCE: dict[str, Any] = json.loads(REFERENCE_PATH.read_text(encoding="utf-8"))
PROVENANCE = frozenset({"evidence", "source", "note", "reason"})

Case = dict[str, Any]
Observe = Callable[[Case], object]
Expect = Callable[[Any], object]
Facts = dict[str, tuple[Observe, Expect]]

V = NuGetVersion.parse
R = VersionRange.parse


def same(value: Any) -> Any:
    """Expected values that need no conversion."""
    return value


def version_or_none(text: str | None) -> NuGetVersion | None:
    """A bound as the reference writes it: a version text or null."""
    return None if text is None else V(text)


def nuget_to_string(version: NuGetVersion) -> str:
    """NuGet's ToString(): normalized for SemVer 2 versions, else the original text."""
    return str(version) if version.is_semver2 else version.original


def is_strict(text: str) -> bool:
    """Whether the strict SemVer 2.0.0 parser takes the text."""
    try:
        NuGetVersion.parse_strict(text)
    except InvalidVersion:
        return False
    return True


def float_behavior(text: str) -> str:
    """The float behavior of a range, by NuGet's name."""
    floating = R(text).float_range
    assert floating is not None
    return floating.behavior.value


def case_id(case: Case) -> str:
    """A test id made of the case's own text."""
    if "a" in case:
        return f"{case['a']!r} vs {case['b']!r}"
    if "range" in case:
        return f"{case['range']!r} with {case.get('version') or case.get('candidate', 'feed')!r}"
    for key in ("input", "id", "rule"):
        if key in case:
            return repr(case[key])
    raise AssertionError(f"case without text: {case}")


def cases(section: str) -> list[Any]:
    """Every case of a reference section, as pytest parameters."""
    return [pytest.param(case, id=case_id(case)) for case in REFERENCE[section]]


def check_facts(case: Case, facts: Facts, inputs: frozenset[str]) -> None:
    """Assert every fact of the case; a fact this test does not know fails the test."""
    keys = [key for key in case if key not in PROVENANCE | inputs]
    unknown = [key for key in keys if key not in facts]
    assert unknown == [], f"facts with no check: {unknown}"
    observed = {key: facts[key][0](case) for key in keys}
    expected = {key: facts[key][1](case[key]) for key in keys}
    assert observed == expected


VERSION_FACTS: Facts = {
    "normalized": (lambda c: str(V(c["input"])), same),
    "full": (lambda c: V(c["input"]).full_string, same),
    "to_string": (lambda c: nuget_to_string(V(c["input"])), same),
    "url_version": (lambda c: V(c["input"]).flat_container_form, same),
    "metadata": (lambda c: V(c["input"]).metadata, same),
    "release": (lambda c: V(c["input"]).release, same),
    "components": (lambda c: list(numbers(V(c["input"]))), same),
    "release_labels": (lambda c: list(V(c["input"]).release_labels), same),
    "is_prerelease": (lambda c: V(c["input"]).is_prerelease, same),
    "original_version": (lambda c: V(c["input"]).original, same),
    "valid_strict": (lambda c: is_strict(c["input"]), same),
    "strict_valid": (lambda c: is_strict(c["input"]), same),
    "lenient_normalized": (lambda c: str(V(c["input"])), same),
}

RANGE_FACTS: Facts = {
    "min": (lambda c: R(c["input"]).min_version, version_or_none),
    "max": (lambda c: R(c["input"]).max_version, version_or_none),
    "min_normalized": (lambda c: str(R(c["input"]).min_version), same),
    "min_inclusive": (lambda c: R(c["input"]).min_inclusive, same),
    "max_inclusive": (lambda c: R(c["input"]).max_inclusive, same),
    "equals_range": (lambda c: (R(c["input"]), hash(R(c["input"]))), lambda t: (R(t), hash(R(t)))),
    "normalized": (lambda c: str(R(c["input"])), same),
    "to_string": (lambda c: str(R(c["input"])), same),
    "short_S": (lambda c: R(c["input"]).to_short_string(), same),
    "legacy": (lambda c: R(c["input"]).to_legacy_string(), same),
    "pretty": (lambda c: R(c["input"]).pretty(), same),
    "normalized_roundtrip_is_identity": (lambda c: str(R(c["input"])) == c["input"], same),
    "float_behavior": (lambda c: float_behavior(c["input"]), same),
}

FEED_FACTS: Facts = {
    "relative_nupkg": (lambda c: flat_container_nupkg_path(c["id"], V(c["version"])), same),
    "nupkg": (lambda c: c["base"] + flat_container_nupkg_path(c["id"], V(c["version"])), same),
    "versions_index": (lambda c: c["base"] + flat_container_index_path(c["id"]), same),
}

BEST_MATCH_FACTS: Facts = {
    "is_better_than_nothing": (
        lambda c: R(c["range"]).best_match([V(c["candidate"])]) is not None,
        same,
    ),
    "find_best_match": (
        lambda c: str(R(c["range"]).best_match([V(text) for text in c["available"]])),
        same,
    ),
}


def numbers(version: NuGetVersion) -> tuple[int, int, int, int]:
    """The four version numbers."""
    return version.major, version.minor, version.patch, version.revision


TESTED_SECTIONS = {
    "version_normalization",
    "flat_container_urls",
    "version_invalid",
    "strict_semver_rejects_but_lenient_accepts",
    "version_equality",
    "version_ordering_a_less_than_b",
    "range_parse",
    "range_to_string",
    "range_invalid",
    "range_satisfies",
    "range_best_match_prerelease_policy",
    "package_id_rules",
}


def test_every_reference_section_is_tested() -> None:
    """A section added to the reference file fails here until a test runs it."""
    assert set(REFERENCE) - {"_meta"} == TESTED_SECTIONS


@pytest.mark.parametrize("case", cases("version_normalization"))
def test_version_normalization(case: Case) -> None:
    """A version parses to NuGet's numbers, labels, metadata and printed forms."""
    check_facts(case, VERSION_FACTS, frozenset({"input"}))


@pytest.mark.parametrize("case", cases("flat_container_urls"))
def test_flat_container_urls(case: Case) -> None:
    """Flat container paths use the lowercase id and the lowercase normalized version."""
    check_facts(case, FEED_FACTS, frozenset({"id", "version", "base"}))


@pytest.mark.parametrize("case", cases("version_invalid"))
def test_version_invalid(case: Case) -> None:
    """An invalid version raises InvalidVersion naming the text and a reason."""
    with pytest.raises(InvalidVersion) as caught:
        V(case["input"])
    assert isinstance(caught.value, TentacleError)
    assert isinstance(caught.value, ValueError)
    assert repr(case["input"]) in str(caught.value)
    assert caught.value.details["reason"]


@pytest.mark.parametrize("case", cases("strict_semver_rejects_but_lenient_accepts"))
def test_strict_and_lenient(case: Case) -> None:
    """The strict parser wants SemVer 2.0.0; the lenient one takes NuGet's legacy forms."""
    check_facts(case, VERSION_FACTS, frozenset({"input"}))


@pytest.mark.parametrize("case", cases("version_equality"))
def test_version_equality(case: Case) -> None:
    """Equal versions compare equal, neither below the other, with equal hashes."""
    a, b = V(case["a"]), V(case["b"])
    assert (a == b) is case["equal"]
    assert (hash(a) == hash(b)) is case["equal"]
    assert not a < b
    assert not b < a


@pytest.mark.parametrize("case", cases("version_ordering_a_less_than_b"))
def test_version_ordering(case: Case) -> None:
    """The first version sorts strictly below the second, by NuGet's ordering."""
    a, b = V(case["a"]), V(case["b"])
    assert a < b
    assert b > a
    assert a != b
    assert [str(v) for v in sorted([b, a])] == [str(a), str(b)]


@pytest.mark.parametrize("case", cases("range_parse"))
def test_range_parse(case: Case) -> None:
    """A range parses to NuGet's bounds, inclusiveness and float."""
    check_facts(case, RANGE_FACTS, frozenset({"input"}))


@pytest.mark.parametrize("case", cases("range_to_string"))
def test_range_to_string(case: Case) -> None:
    """A range prints in NuGet's normalized, short, legacy and pretty forms."""
    check_facts(case, RANGE_FACTS, frozenset({"input"}))


@pytest.mark.parametrize("case", cases("range_invalid"))
def test_range_invalid(case: Case) -> None:
    """An invalid range raises InvalidVersionRange naming the text and a reason."""
    with pytest.raises(InvalidVersionRange) as caught:
        R(case["input"])
    assert isinstance(caught.value, InvalidVersion)
    assert repr(case["input"]) in str(caught.value)
    assert caught.value.details["reason"]


@pytest.mark.parametrize("case", cases("range_satisfies"))
def test_range_satisfies(case: Case) -> None:
    """satisfies() checks the bounds, ignoring metadata."""
    assert R(case["range"]).satisfies(V(case["version"])) is case["satisfies"]


@pytest.mark.parametrize("case", cases("range_best_match_prerelease_policy"))
def test_range_best_match(case: Case) -> None:
    """best_match() takes a prerelease only where the range allows one, and prefers the float."""
    check_facts(case, BEST_MATCH_FACTS, frozenset({"range", "candidate", "available"}))


VALID_IDS = ["Newtonsoft.Json", "My.Pkg", "a", "a-b_c.D9", "x" * 100]
INVALID_IDS = ["", ".a", "a.", "a..b", "a.-b", "a/b", "a b", "x" * 101]


@pytest.mark.parametrize("case", cases("package_id_rules"))
def test_package_id_rules(case: Case) -> None:
    """Ids are word characters joined by single '.' or '-', at most 100 characters."""
    assert "max length 100" in case["rule"]
    assert [is_valid_package_id(i) for i in VALID_IDS] == [True] * len(VALID_IDS)
    assert [is_valid_package_id(i) for i in INVALID_IDS] == [False] * len(INVALID_IDS)


# Floating ranges, from NuGet's VersionRangeFloatParsingTests (beyond the reference file).
INVALID_FLOATS = ["[]", "[*]", "[1.0.0, 1.1.*)", "(, 2.*.*)", "<1.0.*", "~1.*.*", "^*", ">=*"]
INVALID_FLOATS += ["1.*.0-beta-*", "1.*.0-beta", "1.0.0.0.*", "=1.0.*"]


@pytest.mark.parametrize("text", INVALID_FLOATS)
def test_invalid_floating_ranges(text: str) -> None:
    """Stars anywhere but the end of a number part or of the label are refused."""
    with pytest.raises(InvalidVersionRange):
        R(text)


@pytest.mark.parametrize(
    ("text", "legacy", "behavior"),
    [
        ("1.0.*", "[1.0.0, )", FloatBehavior.PATCH),
        ("[1.*, 2.0)", "[1.0.0, 2.0.0)", FloatBehavior.MINOR),
        ("1.0.0.*", "[1.0.0, )", FloatBehavior.REVISION),
        ("1.0.0-beta.*", "[1.0.0-beta.0, )", FloatBehavior.PRERELEASE),
        ("1.0.0-a-*", "[1.0.0-a-, )", FloatBehavior.PRERELEASE),
        ("*-*", "[0.0.0-0, )", FloatBehavior.ABSOLUTE_LATEST),
    ],
)
def test_floating_ranges(text: str, legacy: str, behavior: FloatBehavior) -> None:
    """A float's lower bound is its lowest member; the float prints back as written."""
    parsed = R(text)
    assert parsed.to_legacy_string() == legacy
    assert parsed.float_range is not None
    assert parsed.float_range.behavior is behavior
    assert str(parsed.float_range) == text.strip("[]").split(",")[0]


@pytest.mark.parametrize(
    ("text", "available", "best"),
    [
        ("*", ["1.0.0", "2.0.0"], "2.0.0"),
        ("0.*", ["1.0.0", "2.0.0"], "1.0.0"),
        ("1.0.0-*", ["1.0.0-alpha", "1.0.0-beta"], "1.0.0-beta"),
        ("1.0.0-*", ["1.0.0-beta", "1.0.1-omega"], "1.0.0-beta"),
        ("1.0.0-beta.*", ["1.0.0-beta.1", "1.0.0-beta.2", "1.0.0-beta.a"], "1.0.0-beta.a"),
        ("[1.0.0, 2.0.0)", ["1.1.0", "1.0.0", "2.0.0"], "1.0.0"),
        ("[3.0.0, )", ["1.0.0", "2.0.0"], "None"),
    ],
)
def test_best_match(text: str, available: list[str], best: str) -> None:
    """A fixed range picks its lowest member; a float picks the highest inside the float."""
    assert str(R(text).best_match([V(v) for v in available])) == best


def test_newest_skips_prereleases_unless_asked() -> None:
    """newest() is the highest stable version, or the highest of all when asked."""
    feed = [V(v) for v in ["1.0.0", "2.0.0-rc.1", "1.5.0", "0.9.0"]]
    assert str(newest(feed)) == "1.5.0"
    assert str(newest(feed, include_prerelease=True)) == "2.0.0-rc.1"
    assert newest([V("1.0.0-beta")]) is None
    assert newest([]) is None


def test_constructor_refuses_what_no_version_holds() -> None:
    """A version built directly is checked like a parsed one."""
    with pytest.raises(InvalidVersion):
        NuGetVersion(1, 0, 0, 0, ("a b",))
    with pytest.raises(InvalidVersion):
        NuGetVersion(-1, 0, 0)
    assert str(NuGetVersion(1, 2, 3, 0, ("RC", "1"), "sha")) == "1.2.3-RC.1"


# Properties.

LABEL_CHARS = string.ascii_letters + string.digits + "-"
SPACES = st.sampled_from(["", " ", "  ", "\t"])


def _no_leading_zero(label: str) -> bool:
    return not (len(label) > 1 and label[0] == "0" and label.isdigit())


LABELS = st.one_of(
    st.sampled_from(["alpha", "Alpha", "beta", "RC", "rc", "0", "1", "2", "10", "-1", "-"]),
    st.integers(0, 10**12).map(str),
    st.text(LABEL_CHARS, min_size=1, max_size=6).filter(_no_leading_zero),
)
NUMBERS = st.one_of(st.integers(0, 3), st.integers(0, 2**31 - 1))


@st.composite
def version_texts(draw: st.DrawFn) -> str:
    """Valid lenient version texts: 1-4 numbers with zeros and spaces, labels, metadata."""
    count = draw(st.integers(1, 4))
    pieces = [f"{draw(SPACES)}{'0' * draw(st.integers(0, 2))}{draw(NUMBERS)}" for _ in range(count)]
    text = ".".join(piece + draw(SPACES) for piece in pieces).strip()
    labels = draw(st.lists(LABELS, max_size=3))
    metadata = draw(st.lists(st.text(LABEL_CHARS, min_size=1, max_size=4), max_size=2))
    text += "-" + ".".join(labels) if labels else ""
    text += "+" + ".".join(metadata) if metadata else ""
    return draw(SPACES) + text + draw(SPACES)


VERSIONS = version_texts().map(V)
ARBITRARY = st.one_of(st.text(), st.text(alphabet="0123456789.-+*, \t[]()aAzZ^_"))


@settings(deadline=None)
@given(version_texts())
def test_normalized_form_parses_back_to_an_equal_version(text: str) -> None:
    """parse(str(v)) == v, str() is a fixed point, and full_string keeps the metadata."""
    version = V(text)
    again = V(str(version))
    assert again == version
    assert str(again) == str(version)
    assert V(version.full_string).metadata == version.metadata


@settings(deadline=None)
@given(st.lists(VERSIONS, max_size=10), st.randoms(use_true_random=False))
def test_ordering_is_a_total_order_consistent_with_sorting(
    versions: list[NuGetVersion], shuffler: random.Random
) -> None:
    """Exactly one of <, ==, > holds; == means equal hashes; order is transitive; sorts agree."""
    for a, b in itertools.product(versions, repeat=2):
        assert [a < b, a == b, a > b].count(True) == 1
        assert a != b or hash(a) == hash(b)
    for a, b, c in itertools.product(versions, repeat=3):
        assert not (a <= b <= c) or a <= c
    ordered = sorted(versions)
    assert all(a <= b for a, b in itertools.pairwise(ordered))
    shuffled = list(versions)
    shuffler.shuffle(shuffled)
    assert sorted(shuffled) == ordered


def outcome(parse: Callable[[str], object], text: str) -> object:
    """What parsing gives: the parsed value or the InvalidVersion raised."""
    try:
        return parse(text)
    except InvalidVersion as exc:
        return exc


@settings(deadline=None)
@given(ARBITRARY)
def test_version_parse_raises_only_invalid_version(text: str) -> None:
    """Any text either parses (and round-trips) or raises InvalidVersion naming it."""
    result = outcome(V, text)
    if isinstance(result, InvalidVersion):
        assert repr(text) in str(result)
    else:
        assert isinstance(result, NuGetVersion)
        assert V(str(result)) == result


@settings(deadline=None)
@given(ARBITRARY)
def test_range_parse_raises_only_invalid_version_range(text: str) -> None:
    """Any text either parses to a range whose normalized form is stable, or raises."""
    result = outcome(R, text)
    if isinstance(result, InvalidVersion):
        assert isinstance(result, InvalidVersionRange)
        assert repr(text) in str(result)
    else:
        assert isinstance(result, VersionRange)
        assert str(R(str(result))) == str(result)
