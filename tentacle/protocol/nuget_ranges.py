"""NuGet version ranges and floating ranges, by the rules NuGet's own client applies.

How it works. A range is NuGet's interval notation (``1.0``, ``[1.0]``, ``(1.0,2.0]``,
``(,2.0)``) with an optional floating lower bound (``1.0.*``, ``1.0.0-beta*``, ``*``);
its bounds are versions as tentacle.protocol.nuget_versions parses and orders them. ``satisfies``
checks the bounds only; the float matters to ``best_match``, which follows
``FindBestMatch``: the lowest version in the range, but for a floating range the highest
inside the float.

Errors: ``InvalidVersionRange``, a subclass of ``InvalidVersion``, naming the text and
the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion, dotnet_trim

__all__ = [
    "FloatBehavior",
    "FloatRange",
    "InvalidVersionRange",
    "VersionRange",
]


class InvalidVersionRange(InvalidVersion):
    """A text is not a NuGet version range; the message names the text and why."""


def _invalid_range(text: str, why: str) -> InvalidVersionRange:
    return InvalidVersionRange(
        f"invalid NuGet version range {text!r}: {why}", details={"text": text, "reason": why}
    )


def _try_parse(text: str) -> NuGetVersion | None:
    try:
        return NuGetVersion.parse(text)
    except InvalidVersion:
        return None


class FloatBehavior(Enum):
    """Which part of a floating lower bound may move up (NuGet's names as values)."""

    NONE = "None"
    PRERELEASE = "Prerelease"
    REVISION = "Revision"
    PATCH = "Patch"
    MINOR = "Minor"
    MAJOR = "Major"
    ABSOLUTE_LATEST = "AbsoluteLatest"
    PRERELEASE_REVISION = "PrereleaseRevision"
    PRERELEASE_PATCH = "PrereleasePatch"
    PRERELEASE_MINOR = "PrereleaseMinor"
    PRERELEASE_MAJOR = "PrereleaseMajor"


_FB = FloatBehavior
# How many leading numbers a version must share with the float's minimum to be inside it.
_FIXED_NUMBERS = {
    _FB.PRERELEASE: 4,
    _FB.REVISION: 3,
    _FB.PRERELEASE_REVISION: 3,
    _FB.PATCH: 2,
    _FB.PRERELEASE_PATCH: 2,
    _FB.MINOR: 1,
    _FB.PRERELEASE_MINOR: 1,
    _FB.PRERELEASE_MAJOR: 0,
}
_STABLE_ONLY = {_FB.REVISION, _FB.PATCH, _FB.MINOR}
_STABLE_FLOAT_BY_PARTS = {2: _FB.MINOR, 3: _FB.PATCH, 4: _FB.REVISION}
_PRERELEASE_FLOAT_BY_PARTS = {
    1: _FB.PRERELEASE_MAJOR,
    2: _FB.PRERELEASE_MINOR,
    3: _FB.PRERELEASE_PATCH,
    4: _FB.PRERELEASE_REVISION,
}
_FLOAT_FORMATS = {
    _FB.PRERELEASE: "{v}-{r}*",
    _FB.REVISION: "{M}.{m}.{p}.*",
    _FB.PATCH: "{M}.{m}.*",
    _FB.MINOR: "{M}.*",
    _FB.MAJOR: "*",
    _FB.ABSOLUTE_LATEST: "*-*",
    _FB.PRERELEASE_REVISION: "{M}.{m}.{p}.*-{r}*",
    _FB.PRERELEASE_PATCH: "{M}.{m}.*-{r}*",
    _FB.PRERELEASE_MINOR: "{M}.*-{r}*",
    _FB.PRERELEASE_MAJOR: "*-{r}*",
}


@dataclass(frozen=True, eq=False)
class FloatRange:
    """The floating lower bound of a range ('1.0.*', '2.0.0-rc.*'); equal by behavior and min."""

    behavior: FloatBehavior
    min_version: NuGetVersion
    release_prefix: str = ""

    def satisfies(self, version: NuGetVersion) -> bool:
        """True when the version lies in the part that floats (NuGet's FloatRange.Satisfies)."""
        if self.behavior is _FB.ABSOLUTE_LATEST:
            return True
        if self.behavior is _FB.MAJOR:
            return not version.is_prerelease
        fixed = _FIXED_NUMBERS.get(self.behavior)
        if fixed is None or self._numbers(version)[:fixed] != self._numbers(self.min_version)[:fixed]:
            return False
        if not version.is_prerelease:
            return True
        prefix = self.release_prefix.upper()
        return self.behavior not in _STABLE_ONLY and version.release.upper().startswith(prefix)

    @staticmethod
    def _numbers(version: NuGetVersion) -> tuple[int, int, int, int]:
        return version.major, version.minor, version.patch, version.revision

    def __str__(self) -> str:
        """The float as NuGet prints it: '1.0.*', '*-rc.*', or the plain version."""
        if self.behavior is _FB.NONE:
            return str(self.min_version)
        low = self.min_version
        return _FLOAT_FORMATS[self.behavior].format(
            v=low.numbers_string, M=low.major, m=low.minor, p=low.patch, r=self.release_prefix
        )

    def __eq__(self, other: object) -> bool:
        """Equal when behavior and minimum are equal, as in NuGet."""
        if not isinstance(other, FloatRange):
            return NotImplemented
        return (self.behavior, self.min_version) == (other.behavior, other.min_version)

    def __hash__(self) -> int:
        """Consistent with equality."""
        return hash((self.behavior, self.min_version))


def _make_float(behavior: FloatBehavior, low: NuGetVersion | None, prefix: str | None) -> FloatRange | None:
    if low is None:
        return None
    # Like NuGet, a float given no prefix takes its minimum's labels as the prefix.
    return FloatRange(behavior, low, low.release if prefix is None else prefix)


def _parse_float(text: str) -> FloatRange | None:
    """NuGet's FloatRange.TryParse: where stars may stand and which part they float."""
    if text == "*":
        return FloatRange(_FB.MAJOR, NuGetVersion(0, 0, 0))
    if text == "*-*":
        return FloatRange(_FB.ABSOLUTE_LATEST, NuGetVersion(0, 0, 0, 0, ("0",)), "")
    first, last = text.find("*"), text.rfind("*")
    if "+" in text or last != len(text) - 1:
        return _make_float(_FB.NONE, _try_parse(text), None)
    return _parse_two_stars(text, first) if first != last else _parse_one_star(text)


def _parse_two_stars(text: str, first: int) -> FloatRange | None:
    """'1.0.*-beta*': the first star right before the first dash, the second at the end."""
    dash = text.find("-")
    if dash == -1 or first != dash - 1:
        return None
    stable = text[: dash - 1] + "0"
    behavior = _PRERELEASE_FLOAT_BY_PARTS.get(stable.count(".") + 1, _FB.NONE)
    prefix = text[dash + 1 : -1]
    label = prefix + "0" if not prefix or prefix.endswith(".") else prefix
    return _make_float(behavior, _try_parse(f"{stable}-{label}"), prefix)


def _parse_one_star(text: str) -> FloatRange | None:
    """'1.0.*' floats a number; '1.0.0-beta*' floats the release label."""
    base = text[:-1]
    if "-" not in text:
        base += "0"
        behavior = _STABLE_FLOAT_BY_PARTS.get(base.count(".") + 1, _FB.NONE)
        return _make_float(behavior, _try_parse(base), None)
    prefix = None
    if text.count("-") == 1:
        prefix = base[text.find("-") + 1 :]
        # An empty label is not valid; NuGet floats from '0', the lowest label.
        if not prefix or base.endswith("."):
            base += "0"
    return _make_float(_FB.PRERELEASE, _try_parse(base), prefix)


def _is_blank(text: str) -> bool:
    return not dotnet_trim(text)


def _parse_bound(text: str, part: str) -> NuGetVersion:
    if "*" in part:
        raise _invalid_range(text, "the upper bound cannot float")
    try:
        return NuGetVersion.parse(part)
    except InvalidVersion as exc:
        raise _invalid_range(text, exc.message) from None


def _parse_lower(text: str, part: str) -> tuple[NuGetVersion | None, FloatRange | None]:
    if _is_blank(part):
        return None, None
    if "*" not in part:
        return _parse_bound(text, part), None
    floating = _parse_float(part)
    if floating is None:
        raise _invalid_range(text, f"{part!r} is not a valid floating version")
    return floating.min_version, floating


def _split_brackets(text: str, trimmed: str) -> tuple[str, str, bool, bool]:
    """'[a, b)' into its two bound texts and inclusiveness, with NuGet's checks."""
    if trimmed[-1] not in ")]":
        raise _invalid_range(text, "a range opened with a bracket must close with ')' or ']'")
    parts = trimmed[1:-1].split(",")
    if len(parts) > 2:
        raise _invalid_range(text, "more than one ','")
    if all(part == "" for part in parts):
        raise _invalid_range(text, "neither bound is given")
    min_inclusive, max_inclusive = trimmed[0] == "[", trimmed[-1] == "]"
    if len(parts) == 1 and not (min_inclusive and max_inclusive):
        raise _invalid_range(text, "a single version in brackets must be written [v]")
    return parts[0], parts[-1], min_inclusive, max_inclusive


def _check_order(text: str, low: NuGetVersion | None, high: NuGetVersion | None, mixed: bool) -> None:
    if low is None or high is None:
        return
    if low > high:
        raise _invalid_range(text, f"the lower bound {low} is above the upper bound {high}")
    if low == high and mixed:
        raise _invalid_range(text, "equal bounds must be both inclusive or both exclusive")


@dataclass(frozen=True, eq=False)
class VersionRange:
    """A NuGet version range: optional bounds, their inclusiveness, an optional float.

    A missing bound is never inclusive (as NuGet reports it). Equal ranges have equal
    bounds, inclusiveness and float.
    """

    min_version: NuGetVersion | None = None
    min_inclusive: bool = True
    max_version: NuGetVersion | None = None
    max_inclusive: bool = False
    float_range: FloatRange | None = None

    def __post_init__(self) -> None:
        """Make a missing bound exclusive so that equality needs no special case."""
        object.__setattr__(self, "min_inclusive", self.min_inclusive and self.min_version is not None)
        object.__setattr__(self, "max_inclusive", self.max_inclusive and self.max_version is not None)

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Parse '1.0', '[1.0]', '(1.0,2.0]', '(,2.0)', '1.0.*', '*'; raise InvalidVersionRange."""
        trimmed = dotnet_trim(text)
        if not trimmed:
            raise _invalid_range(text, "empty")
        if trimmed == "*":
            return cls(NuGetVersion(0, 0, 0), True, None, False, _parse_float("*"))
        if trimmed[0] in "([":
            low_text, high_text, min_inclusive, max_inclusive = _split_brackets(text, trimmed)
        else:
            low_text, high_text, min_inclusive, max_inclusive = trimmed, "", True, False
        low, floating = _parse_lower(text, low_text)
        high = None if _is_blank(high_text) else _parse_bound(text, high_text)
        _check_order(text, low, high, min_inclusive != max_inclusive)
        return cls(low, min_inclusive, high, max_inclusive, floating)

    @property
    def is_floating(self) -> bool:
        """True when the lower bound floats ('1.0.*', '1.0.0-beta*', '*')."""
        return self.float_range is not None and self.float_range.behavior is not _FB.NONE

    def satisfies(self, version: NuGetVersion) -> bool:
        """True when the version lies within the bounds (metadata ignored, float ignored)."""
        low, high = self.min_version, self.max_version
        above = low is None or (low <= version if self.min_inclusive else low < version)
        below = high is None or (version <= high if self.max_inclusive else version < high)
        return above and below

    def best_match(self, versions: Iterable[NuGetVersion]) -> NuGetVersion | None:
        """The version NuGet's FindBestMatch picks: the lowest in range, or None.

        A prerelease is a candidate only when a bound is a prerelease or the range floats
        over prereleases; a floating range prefers the highest version inside its float.
        """
        best: NuGetVersion | None = None
        for version in versions:
            if self._is_better(best, version):
                best = version
        return best

    def _is_better(self, current: NuGetVersion | None, considering: NuGetVersion) -> bool:
        if not self._accepts_prerelease() and considering.is_prerelease:
            return False
        if not self.satisfies(considering):
            return False
        if current is None:
            return True
        if self.float_range is not None and self.is_floating:
            return self._is_better_floating(self.float_range, current, considering)
        return considering < current

    def _accepts_prerelease(self) -> bool:
        bounds = (self.min_version, self.max_version)
        behavior = self.float_range.behavior if self.float_range is not None else None
        float_ok = behavior in (_FB.PRERELEASE, _FB.ABSOLUTE_LATEST)
        return float_ok or any(bound is not None and bound.is_prerelease for bound in bounds)

    @staticmethod
    def _is_better_floating(floating: FloatRange, current: NuGetVersion, considering: NuGetVersion) -> bool:
        current_in, considering_in = floating.satisfies(current), floating.satisfies(considering)
        if current_in or considering_in:
            # Inside the float wins; between two inside it, the higher wins.
            return considering_in and (not current_in or current < considering)
        current_below = current < floating.min_version
        considering_below = considering < floating.min_version
        if current_below != considering_below:
            return current_below  # a version above the float beats one below it
        # Both above: the lower is nearer the float. Both below: the higher is.
        return considering > current if current_below else considering < current

    def __str__(self) -> str:
        """NuGet's normalized range form: '[1.0.0, 2.0.0)', '[1.0.*, )', '(, )'."""
        if self.min_version is None or not self.is_floating:
            return self.to_legacy_string()
        return self._bracketed(str(self.float_range))

    def _bracketed(self, lower: str) -> str:
        upper = "" if self.max_version is None else str(self.max_version)
        opening = "[" if self.min_inclusive else "("
        return f"{opening}{lower}, {upper}{']' if self.max_inclusive else ')'}"

    def to_legacy_string(self) -> str:
        """The range with the float's minimum instead of the float ('[0.0.0, )' for '*')."""
        return self._bracketed("" if self.min_version is None else str(self.min_version))

    def _is_exact(self) -> bool:
        both = self.min_version is not None and self.max_version is not None
        return both and self.min_inclusive and self.max_inclusive and self.min_version == self.max_version

    def to_short_string(self) -> str:
        """NuGet's short form: '1.0.0' for a lower bound only, '[1.0.0]' for one version."""
        if self.min_version is not None and self.min_inclusive and self.max_version is None:
            return str(self.float_range) if self.is_floating else str(self.min_version)
        if self._is_exact():
            return f"[{self.min_version}]"
        return str(self)

    def pretty(self) -> str:
        """NuGet's pretty print: '(>= 1.0.0)', '(> 1.0.0 && < 2.0.0)', '(= 1.0.0)', or ''."""
        if self._is_exact():
            return f"(= {self.min_version})"
        low, high = self.min_version, self.max_version
        lower = "" if low is None else f">{'=' if self.min_inclusive else ''} {low}"
        upper = "" if high is None else f"<{'=' if self.max_inclusive else ''} {high}"
        joined = " && ".join(bound for bound in (lower, upper) if bound)
        return f"({joined})" if joined else ""

    def _identity(self) -> tuple[object, ...]:
        floating = self.float_range if self.is_floating else None
        bounds = (self.min_version, self.min_inclusive, self.max_version, self.max_inclusive)
        return (*bounds, floating)

    def __eq__(self, other: object) -> bool:
        """Equal bounds, inclusiveness and float (NuGet's VersionRange.Equals)."""
        if not isinstance(other, VersionRange):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        """Consistent with equality."""
        return hash(self._identity())
