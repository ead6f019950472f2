"""NuGet versions and package ids, by the rules NuGet's own client applies.

How it works. A version is parsed the lenient way NuGet.Versioning does it: the text is
trimmed, cut at the first ``-`` or ``+`` into numbers, release labels and metadata; the
numbers follow System.Version (1 to 4 Int32 parts, spaces allowed around each), labels
and metadata are dot-separated ``[0-9A-Za-z-]`` identifiers (numeric labels without a
leading zero). ``str()`` is NuGet's normalized form (``ToNormalizedString``): three
numbers, the fourth only when it is not zero, then ``-labels``; metadata is left out, as
NuGet leaves it out of identity and URLs (``full_string`` keeps it).

Ordering is NuGet's default comparer: numbers, then a stable version above any prerelease
of it, then label by label (numeric labels by value and before text labels, text labels
case-insensitively, a longer list above its own prefix). Metadata never counts.

Version ranges (``VersionRange``, floating ranges) are in tentacle.protocol.nuget_ranges.

Errors: ``InvalidVersion`` (a TentacleError and a ValueError), naming the text and the
reason; ranges raise its subclass ``InvalidVersionRange``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, total_ordering

from tentacle.errors import InvalidInput

__all__ = [
    "InvalidVersion",
    "NuGetVersion",
    "dotnet_trim",
    "flat_container_index_path",
    "flat_container_nupkg_path",
    "is_valid_package_id",
    "newest",
]

_INT32_MAX = 2**31 - 1
# System.Version parses each part as an Int32 that may have these spaces around it.
_NUMBER = re.compile(r"[ \t\n\v\f\r]*([0-9]+)[ \t\n\v\f\r]*")
_STRICT_NUMBER = re.compile(r"0|[1-9][0-9]*")
_IDENTIFIER = re.compile(r"[0-9A-Za-z-]+")
# Int32.TryParse, which NuGet uses to call a label numeric, takes a leading minus sign.
_SIGNED_NUMBER = re.compile(r"-?[0-9]+")
_PACKAGE_ID = re.compile(r"\w+(?:[.-]\w+)*")
_PACKAGE_ID_MAX_LENGTH = 100


class InvalidVersion(InvalidInput):
    """A text is not a NuGet version; the message names the text and why."""


def _invalid(text: str, why: str) -> InvalidVersion:
    return InvalidVersion(f"invalid NuGet version {text!r}: {why}", details={"text": text, "reason": why})


def _is_dotnet_space(char: str) -> bool:
    return char in "\t\n\v\f\r\x85" or unicodedata.category(char) in ("Zs", "Zl", "Zp")


def dotnet_trim(text: str) -> str:
    """Strip what .NET's String.Trim strips (str.strip would also take \\x1c-\\x1f)."""
    start, end = 0, len(text)
    while start < end and _is_dotnet_space(text[start]):
        start += 1
    while end > start and _is_dotnet_space(text[end - 1]):
        end -= 1
    return text[start:end]


def _split_sections(text: str) -> tuple[str, tuple[str, ...], str | None]:
    """Cut 'numbers[-labels][+metadata]' at the first '-' or '+', labels at the next '+'."""
    cut = next((i for i, char in enumerate(text) if char in "-+"), len(text))
    numbers, rest = text[:cut], text[cut:]
    if rest.startswith("-"):
        labels, plus, metadata = rest[1:].partition("+")
        return numbers, tuple(labels.split(".")), metadata if plus else None
    return numbers, (), rest[1:] if rest else None


def _parse_number(text: str, piece: str) -> int:
    match = _NUMBER.fullmatch(piece)
    if match is None:
        raise _invalid(text, f"{piece!r} is not a number")
    # Length first: int() refuses digit strings past a few thousand characters.
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > 10 or int(digits) > _INT32_MAX:
        raise _invalid(text, f"{digits} is larger than {_INT32_MAX}")
    return int(digits)


def _parse_numbers(text: str, part: str) -> tuple[int, int, int, int]:
    if not part:
        raise _invalid(text, "empty" if not text.strip() else "no version number")
    # System.Version needs two parts; NuGet appends '.0' to a lone number.
    pieces = part.split(".") if "." in part else [part, "0"]
    if len(pieces) > 4:
        raise _invalid(text, f"{part!r} has more than four numbers")
    major, minor, patch, revision = (*(_parse_number(text, p) for p in pieces), 0, 0)[:4]
    return major, minor, patch, revision


def _identifiers_problem(parts: Iterable[str], what: str, *, leading_zeros: bool) -> str | None:
    for part in parts:
        if not part:
            return f"empty {what}"
        if not _IDENTIFIER.fullmatch(part):
            return f"{what} {part!r} has a character other than 0-9, A-Z, a-z and '-'"
        if not leading_zeros and len(part) > 1 and part[0] == "0" and part.isdigit():
            return f"numeric {what} {part!r} has a leading zero"
    return None


def _suffix_problem(labels: Sequence[str], metadata: str | None) -> str | None:
    problem = _identifiers_problem(labels, "release label", leading_zeros=False)
    if problem is None and metadata is not None:
        problem = _identifiers_problem(metadata.split("."), "metadata part", leading_zeros=True)
    return problem


def _label_key(label: str) -> tuple[int, int, str]:
    """Numeric labels (Int32.TryParse succeeds) first by value, then text ignoring case."""
    if _SIGNED_NUMBER.fullmatch(label) and len(label.lstrip("-0")) <= 10:
        value = int(label)
        if -(2**31) <= value <= _INT32_MAX:
            return (0, value, "")
    return (1, 0, label.upper())


@total_ordering
@dataclass(frozen=True, eq=False)
class NuGetVersion:
    """One NuGet package version; compares, hashes and prints by NuGet's rules.

    Equality ignores metadata and the case of labels, as NuGet's default comparer does.
    ``original`` is the parsed text without spaces ('' when built directly).
    """

    major: int
    minor: int
    patch: int
    revision: int = 0
    release_labels: tuple[str, ...] = ()
    metadata: str = ""
    original: str = ""

    def __post_init__(self) -> None:
        """Refuse values no NuGet version holds, so that str() always parses back."""
        for number in (self.major, self.minor, self.patch, self.revision):
            if not 0 <= number <= _INT32_MAX:
                raise _invalid(repr(self), f"{number} is outside 0-{_INT32_MAX}")
        problem = _suffix_problem(self.release_labels, self.metadata or None)
        if problem is not None:
            raise _invalid(repr(self), problem)

    @classmethod
    def parse(cls, text: str) -> NuGetVersion:
        """Parse NuGet's lenient form ('1', '1.0.0.0', ' 1.2-Beta+sha'); raise InvalidVersion."""
        part, labels, metadata = _split_sections(dotnet_trim(text))
        major, minor, patch, revision = _parse_numbers(text, part)
        problem = _suffix_problem(labels, metadata)
        if problem is not None:
            raise _invalid(text, problem)
        original = text.replace(" ", "")
        return cls(major, minor, patch, revision, labels, metadata or "", original)

    @classmethod
    def parse_strict(cls, text: str) -> NuGetVersion:
        """Parse strict SemVer 2.0.0 (exactly three numbers, no spaces, no leading zeros)."""
        part, labels, metadata = _split_sections(text)
        pieces = part.split(".")
        if len(pieces) != 3 or not all(_STRICT_NUMBER.fullmatch(p) for p in pieces):
            raise _invalid(text, "SemVer 2.0.0 needs three numbers without leading zeros")
        major, minor, patch = (_parse_number(text, p) for p in pieces)
        problem = _suffix_problem(labels, metadata)
        if problem is not None:
            raise _invalid(text, problem)
        return cls(major, minor, patch, 0, labels, metadata or "", text)

    @property
    def is_prerelease(self) -> bool:
        """True when the version has release labels."""
        return bool(self.release_labels)

    @property
    def is_semver2(self) -> bool:
        """True when only a SemVer 2.0.0 client understands it (metadata or dotted labels)."""
        return bool(self.metadata) or len(self.release_labels) > 1

    @property
    def release(self) -> str:
        """The release labels joined by dots ('' for a stable version)."""
        return ".".join(self.release_labels)

    @property
    def numbers_string(self) -> str:
        """The numbers part as NuGet prints it: the fourth number only when not zero."""
        numbers = f"{self.major}.{self.minor}.{self.patch}"
        return f"{numbers}.{self.revision}" if self.revision else numbers

    @property
    def full_string(self) -> str:
        """The normalized form with '+metadata' when there is metadata."""
        return f"{self}+{self.metadata}" if self.metadata else str(self)

    @property
    def flat_container_form(self) -> str:
        """The version as it appears in a NuGet v3 flat container URL."""
        return str(self).lower()

    def __str__(self) -> str:
        """NuGet's normalized form: '1.2.0', '1.2.3.4-RC'; never metadata."""
        return f"{self.numbers_string}-{self.release}" if self.is_prerelease else self.numbers_string

    @cached_property
    def _sort_key(self) -> tuple[int, int, int, int, bool, tuple[tuple[int, int, str], ...]]:
        labels = tuple(_label_key(label) for label in self.release_labels)
        numbers = (self.major, self.minor, self.patch, self.revision)
        return (*numbers, not self.release_labels, labels)

    def __eq__(self, other: object) -> bool:
        """Equal when NuGet's default comparer finds no difference (metadata ignored)."""
        if not isinstance(other, NuGetVersion):
            return NotImplemented
        return self._sort_key == other._sort_key

    def __lt__(self, other: object) -> bool:
        """NuGet's default ordering."""
        if not isinstance(other, NuGetVersion):
            return NotImplemented
        return self._sort_key < other._sort_key

    def __hash__(self) -> int:
        """Consistent with equality: metadata and label case do not count."""
        return hash(self._sort_key)


def newest(versions: Iterable[NuGetVersion], include_prerelease: bool = False) -> NuGetVersion | None:
    """The highest of the versions (stable ones only unless asked), or None."""
    candidates = [v for v in versions if include_prerelease or not v.is_prerelease]
    return max(candidates, default=None)


def is_valid_package_id(package_id: str) -> bool:
    """NuGet's package id rule: word characters joined by single '.' or '-', at most 100."""
    return len(package_id) <= _PACKAGE_ID_MAX_LENGTH and bool(_PACKAGE_ID.fullmatch(package_id))


def flat_container_index_path(package_id: str) -> str:
    """The versions index of a package, relative to a PackageBaseAddress."""
    return f"{package_id.lower()}/index.json"


def flat_container_nupkg_path(package_id: str, version: NuGetVersion) -> str:
    """The .nupkg of one version, relative to a PackageBaseAddress."""
    lower_id, lower_version = package_id.lower(), version.flat_container_form
    return f"{lower_id}/{lower_version}/{lower_id}.{lower_version}.nupkg"
