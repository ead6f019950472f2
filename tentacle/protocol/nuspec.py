"""A package's manifest read from its ``.nuspec`` (pure, no I/O).

How it works: expat parses the document with namespace processing and a handful of
handlers that keep only what we need: ``package/metadata/id`` and ``.../version`` (all the
tentacle needs), the descriptive fields a feed shows (`TEXT_FIELDS`), and the dependency
groups. A document type declaration is refused the moment expat meets it, before any
entity can be declared, so entity-expansion ("billion laughs") and external-entity attacks
never start. Names are matched the way NuGet's own reader does: ``metadata`` by local name
in any namespace (legacy packages put the namespace there), its children in the namespace
of ``metadata``; so every nuspec schema namespace NuGet ever used, and none, is accepted.

Dependencies come as NuGet writes them: ``<dependencies><group targetFramework="...">
<dependency id=".." version=".."/></group></dependencies>``, or, in old packages, the
``<dependency>`` elements straight inside ``<dependencies>`` (one group for every framework).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from xml.parsers import expat

from tentacle.errors import InvalidInput

MAX_NUSPEC_BYTES = 1024 * 1024
# Metadata elements kept as text, besides id and version (NuGet's names, camelCase).
TEXT_FIELDS = (
    "title",
    "authors",
    "owners",
    "description",
    "summary",
    "tags",
    "projectUrl",
    "iconUrl",
    "licenseUrl",
    "requireLicenseAcceptance",
    "minClientVersion",
    "language",
)
_IDENTITY = ("id", "version")
# NuGet's PackageIdValidator: word characters separated by single dots or dashes.
_ID = re.compile(r"\w+(?:[.-]\w+)*")
_MAX_ID_LENGTH = 100
# Shape only: the NuGet version rules themselves live in their own module.
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,127}")
_MAX_DEPENDENCIES = 10_000


class NuspecError(InvalidInput):
    """The manifest is malformed, incomplete, too large or uses a DTD."""


@dataclass(frozen=True)
class NuspecInfo:
    """What a package says it is."""

    id: str
    version: str


@dataclass(frozen=True)
class Dependency:
    """One package a package depends on; ``range`` as the nuspec wrote it ('' means any)."""

    id: str
    range: str = ""


@dataclass(frozen=True)
class DependencyGroup:
    """The dependencies for one target framework ('' : every framework)."""

    target_framework: str = ""
    dependencies: tuple[Dependency, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """Everything a feed keeps from a nuspec: identity, descriptive text, dependency groups."""

    id: str
    version: str
    fields: dict[str, str] = field(default_factory=dict)
    dependency_groups: tuple[DependencyGroup, ...] = ()


def parse_nuspec(xml: bytes) -> NuspecInfo:
    """The id and version of a .nuspec document; raises NuspecError when it is unusable."""
    manifest = read_manifest(xml)
    return NuspecInfo(manifest.id, manifest.version)


def read_manifest(xml: bytes) -> Manifest:
    """The whole manifest of a .nuspec document; raises NuspecError when it is unusable."""
    if len(xml) > MAX_NUSPEC_BYTES:
        raise NuspecError(f"nuspec is {len(xml)} bytes, more than the {MAX_NUSPEC_BYTES} allowed")
    reader = _ManifestReader()
    values = reader.read(xml)
    return Manifest(
        id=_checked_id(values.get("id")),
        version=_checked_version(values),
        fields={name: values[name].strip() for name in TEXT_FIELDS if name in values},
        dependency_groups=reader.groups(),
    )


def _checked_id(value: str | None) -> str:
    if value is None:
        raise NuspecError("nuspec has no <id> in <metadata>")
    package_id = value.strip()
    if len(package_id) > _MAX_ID_LENGTH or not _ID.fullmatch(package_id):
        raise NuspecError(
            f"nuspec <id> {package_id!r} is not a NuGet package id"
            f" (1-{_MAX_ID_LENGTH} letters, digits or '_', separated by '.' or '-')"
        )
    return package_id


def _checked_version(values: dict[str, str]) -> str:
    if "version" not in values:
        raise NuspecError("nuspec has no <version> in <metadata>")
    version = values["version"].strip()
    if not _VERSION.fullmatch(version):
        raise NuspecError(f"nuspec <version> {version!r} is not a version")
    return version


class _ManifestReader:
    """Expat handlers that collect metadata text and dependency groups.

    Each open element gets a role from its parent's role (the table in `_ROLES`):
    ``package`` > ``metadata`` > ``field`` | ``dependencies`` > ``group`` > ``dependency``;
    anything else is ``other`` and everything inside it is ignored.
    """

    def __init__(self) -> None:
        self._stack: list[str] = []
        self._seen_metadata = False
        self._metadata_ns = ""
        self._field: str | None = None
        self._text: list[str] = []
        self._groups: list[tuple[str, list[Dependency]]] = []
        self._flat: list[Dependency] = []  # old packages: <dependency> straight in <dependencies>
        self._count = 0
        self.values: dict[str, str] = {}

    def read(self, xml: bytes) -> dict[str, str]:
        """Parse the whole document and return the fields found."""
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = _refuse_doctype
        parser.EntityDeclHandler = _refuse_entity
        parser.ExternalEntityRefHandler = _refuse_external_entity
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._characters
        try:
            parser.Parse(xml, True)
        except expat.ExpatError as exc:
            raise NuspecError(f"nuspec is not well-formed XML: {exc}") from exc
        return self.values

    def groups(self) -> tuple[DependencyGroup, ...]:
        """The dependency groups, in document order (the flat list first, as one group)."""
        found = [DependencyGroup("", tuple(self._flat))] if self._flat else []
        found += [DependencyGroup(tfm, tuple(deps)) for tfm, deps in self._groups]
        return tuple(found)

    def _start(self, name: str, attributes: dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        role = self._role(namespace, local)
        self._stack.append(role)
        if role == "group":
            self._groups.append((attributes.get("targetFramework", "").strip(), []))
        elif role in ("dependency", "flat dependency"):
            self._add_dependency(role, attributes)

    def _role(self, namespace: str, local: str) -> str:
        parent = self._stack[-1] if self._stack else None
        if parent is None:
            if local != "package":
                raise NuspecError(f"nuspec root element is <{local}>, expected <package>")
            return "package"
        if parent == "package" and local == "metadata" and not self._seen_metadata:
            self._seen_metadata = True
            self._metadata_ns = namespace
            return "metadata"
        if namespace != self._metadata_ns:
            return "other"
        return self._child_role(parent, local)

    def _child_role(self, parent: str, local: str) -> str:
        if parent == "metadata" and (local in _IDENTITY or local in TEXT_FIELDS):
            if local in self.values:
                raise NuspecError(f"nuspec has more than one <{local}> in <metadata>")
            self._field, self._text = local, []
            return "field"
        if parent == "metadata" and local == "dependencies":
            return "dependencies"
        if parent == "dependencies" and local == "group":
            return "group"
        if parent == "dependencies" and local == "dependency":
            return "flat dependency"
        return "dependency" if parent == "group" and local == "dependency" else "other"

    def _add_dependency(self, role: str, attributes: dict[str, str]) -> None:
        self._count += 1
        if self._count > _MAX_DEPENDENCIES:
            raise NuspecError(f"nuspec has more than {_MAX_DEPENDENCIES} dependencies")
        package_id = attributes.get("id", "").strip()
        if not package_id:
            raise NuspecError("nuspec has a <dependency> without an id")
        dependency = Dependency(package_id, attributes.get("version", "").strip())
        (self._flat if role == "flat dependency" else self._groups[-1][1]).append(dependency)

    def _end(self, _name: str) -> None:
        if self._stack.pop() == "field" and self._field is not None:
            self.values[self._field] = "".join(self._text)
            self._field = None

    def _characters(self, data: str) -> None:
        if self._stack and self._stack[-1] == "field":
            self._text.append(data)


def _refuse_doctype(name: str, _sysid: str | None, _pubid: str | None, _has_internal_subset: bool) -> None:
    raise NuspecError(f"nuspec declares a DTD (<!DOCTYPE {name}>); DTDs are refused")


def _refuse_entity(name: str, *_rest: object) -> None:
    raise NuspecError(f"nuspec declares an entity ({name!r}); entity declarations are refused")


def _refuse_external_entity(*_args: object) -> int:
    raise NuspecError("nuspec refers to an external entity; external entities are refused")
