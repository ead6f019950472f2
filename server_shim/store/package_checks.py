"""What a pushed file is, and whether a tentacle could deploy it: checked before the feed takes it.

A ``.nupkg`` is read from its staged copy: its zip central directory (entry count), every
member (a regular file or directory whose name, percent-decoded as NuGet decodes it,
passes the extraction rules of tentacle.protocol.member_names, and no two members the
same once decoded), exactly one ``.nuspec`` at its root, named after the id it declares
(as NuGet ``pack`` names it), and that nuspec's manifest. A ``.zip`` or ``.tar.gz`` is an
Octopus-style archive: its magic bytes are checked and its id and version come from its
file name (`split_file_name`). Every refusal is a `PackageError` (400) naming the file and why.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tentacle.errors import InvalidInput
from tentacle.protocol.member_names import ArchiveError, member_path, zip_member_kind, zip_member_name
from tentacle.protocol.nuget_versions import InvalidVersion, NuGetVersion, is_valid_package_id
from tentacle.protocol.nuspec import MAX_NUSPEC_BYTES, Manifest, NuspecError, read_manifest

MAX_NUPKG_ENTRIES = 65_536
MAX_NAME_LENGTH = 1024
# Accepted endings and the one each is stored under, longest first.
_KINDS = ((".tar.gz", ".tar.gz"), (".nupkg", ".nupkg"), (".zip", ".zip"), (".tgz", ".tar.gz"))
_VERSION_START = re.compile(r"\.(?=[0-9])")
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError)


class PackageError(InvalidInput):
    """A file the feed will not take; the message names the file and why."""


@dataclass(frozen=True)
class Identified:
    """What a file is: its id, version and (for a .nupkg) its manifest."""

    id: str
    version: NuGetVersion
    ending: str
    manifest: Manifest | None = None


def kind_of(name: str) -> tuple[str, str]:
    """(name without its ending, the ending the feed stores it under)."""
    lower = name.lower()
    for ending, stored in _KINDS:
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], stored
    raise PackageError(f"{name}: not a package file (.nupkg, .zip, .tar.gz or .tgz)")


def split_file_name(name: str) -> tuple[str, NuGetVersion]:
    """The id and version of a file named ``ID.VERSION.ext`` ('My.Pkg.1.2.3-beta.1.tar.gz').

    The version starts at the first '.' followed by a digit where the rest is a version
    and what comes before is a package id.
    """
    stem, ending = kind_of(name)
    for match in _VERSION_START.finditer(stem):
        package_id, text = stem[: match.start()], stem[match.end() :]
        if not is_valid_package_id(package_id):
            continue
        try:
            return package_id, NuGetVersion.parse(text)
        except InvalidVersion:
            continue
    raise PackageError(
        f"{name}: cannot tell the package id from the version; name the file ID.VERSION{ending}"
        f" (for example My.App.1.2.3{ending})"
    )


def identify(path: Path, name: str) -> Identified:
    """Identify the staged file `path`, pushed as `name`; PackageError when the feed refuses it."""
    _, ending = kind_of(name)
    if ending == ".nupkg":
        return _identify_nupkg(path, name)
    with path.open("rb") as handle:
        head = handle.read(4)
    if ending == ".zip" and not zipfile.is_zipfile(path):
        raise PackageError(f"{name}: not a zip file")
    if ending == ".tar.gz" and not head.startswith(_GZIP_MAGIC):
        raise PackageError(f"{name}: not a gzip-compressed tar file")
    package_id, version = split_file_name(name)
    return Identified(package_id, version, ending)


def _identify_nupkg(path: Path, name: str) -> Identified:
    try:
        with zipfile.ZipFile(path) as archive:
            nuspec, nuspec_path = _root_nuspec(archive, name)
            with archive.open(nuspec) as member:
                data = member.read(MAX_NUSPEC_BYTES + 1)
    except _ZIP_ERRORS as exc:
        raise PackageError(f"{name}: not a readable .nupkg (zip) file: {exc}") from exc
    try:
        manifest = read_manifest(data)
        version = NuGetVersion.parse(manifest.version)
    except (NuspecError, InvalidVersion) as exc:
        raise PackageError(f"{name}: {exc.message}") from exc
    if nuspec_path[: -len(".nuspec")].lower() != manifest.id.lower():
        raise PackageError(
            f"{name}: its manifest {nuspec_path} declares the id {manifest.id!r}; NuGet names the"
            f" manifest after the id ({manifest.id}.nuspec), so the file and its id disagree"
        )
    return Identified(manifest.id, version, ".nupkg", manifest)


def _root_nuspec(archive: zipfile.ZipFile, name: str) -> tuple[zipfile.ZipInfo, str]:
    """The one root .nuspec, after every member passed the extraction rules."""
    entries = archive.infolist()
    if len(entries) > MAX_NUPKG_ENTRIES:
        raise PackageError(f"{name}: more than {MAX_NUPKG_ENTRIES} entries")
    seen: set[str] = set()
    found = []
    for info in entries:
        path = _checked_member(info, name)
        if path in seen:
            raise PackageError(f"{name}: member {info.orig_filename!r} breaks rule 'duplicate name'")
        seen.add(path)
        if "/" not in path and path.lower().endswith(".nuspec") and not info.is_dir():
            found.append((info, path))
    if len(found) != 1:
        where = "no .nuspec" if not found else f"{len(found)} .nuspec files"
        raise PackageError(f"{name}: a .nupkg needs exactly one .nuspec at its root; it has {where}")
    return found[0]


def _checked_member(info: zipfile.ZipInfo, name: str) -> str:
    stored = zip_member_name(info.orig_filename, info.flag_bits)
    try:
        kind = zip_member_kind(stored, info.external_attr >> 16)
        if kind not in ("file", "dir"):
            raise ArchiveError(kind, "only regular files and directories are allowed", member=stored)
        return member_path(stored, kind == "dir", MAX_NAME_LENGTH, percent_encoded=True)
    except ArchiveError as exc:
        raise PackageError(f"{name}: {exc.message}", details=exc.details) from exc
