"""The NuGet rules in one importable module: versions and version ranges.

``NuGetVersion.parse(text)`` (``str()`` gives the normalized form; comparisons follow
NuGet's ordering) and ``VersionRange.parse(text)`` with ``.satisfies(version)``, as
design.md names them. They live in `tentacle.protocol.nuget_versions` and
`tentacle.protocol.nuget_ranges` (each under the size a module should have); this
module gathers them for callers that want the rules, not their layout.
"""

from tentacle.protocol.nuget_ranges import FloatBehavior, FloatRange, InvalidVersionRange, VersionRange
from tentacle.protocol.nuget_versions import (
    InvalidVersion,
    NuGetVersion,
    flat_container_index_path,
    flat_container_nupkg_path,
    is_valid_package_id,
    newest,
)

__all__ = [
    "FloatBehavior",
    "FloatRange",
    "InvalidVersion",
    "InvalidVersionRange",
    "NuGetVersion",
    "VersionRange",
    "flat_container_index_path",
    "flat_container_nupkg_path",
    "is_valid_package_id",
    "newest",
]
