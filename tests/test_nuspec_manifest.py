"""What the feed keeps from a nuspec: descriptive fields and dependency groups, as NuGet writes them."""

from __future__ import annotations

import pytest

from tentacle.protocol.nuspec import Dependency, DependencyGroup, NuspecError, read_manifest

NS = "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd"


def document(metadata: str) -> bytes:
    """A nuspec in NuGet's current namespace with this metadata content."""
    head = f'<package xmlns="{NS}"><metadata><id>Web</id><version>1.0</version>'
    return f"{head}{metadata}</metadata></package>".encode()


def test_descriptive_fields_are_kept_trimmed() -> None:
    """Title, authors, description, tags and the URLs come back by NuGet's element names."""
    manifest = read_manifest(
        document(
            "<title> The Web </title><authors>Ann, Bob</authors><description>Serves.</description>"
            "<tags>web api</tags><projectUrl>https://example.com/</projectUrl><summary>S</summary>"
            "<requireLicenseAcceptance>false</requireLicenseAcceptance><copyright>ignored</copyright>"
        )
    )
    assert (manifest.id, manifest.version) == ("Web", "1.0")
    assert manifest.fields == {
        "title": "The Web",
        "authors": "Ann, Bob",
        "description": "Serves.",
        "tags": "web api",
        "projectUrl": "https://example.com/",
        "summary": "S",
        "requireLicenseAcceptance": "false",
    }
    assert manifest.dependency_groups == ()


def test_dependency_groups_by_target_framework() -> None:
    """Each <group> is one group with its framework; a group may be empty."""
    manifest = read_manifest(
        document(
            '<dependencies><group targetFramework=".NETStandard2.0">'
            '<dependency id="Newtonsoft.Json" version="[12.0.1, )" exclude="Build"/>'
            '<dependency id="Any.Version"/></group><group targetFramework="net472"/>'
            "<group><dependency id='Shared' version='2.0'/></group></dependencies>"
        )
    )
    assert manifest.dependency_groups == (
        DependencyGroup(
            ".NETStandard2.0", (Dependency("Newtonsoft.Json", "[12.0.1, )"), Dependency("Any.Version", ""))
        ),
        DependencyGroup("net472", ()),
        DependencyGroup("", (Dependency("Shared", "2.0"),)),
    )


def test_old_flat_dependencies_are_one_group_for_every_framework() -> None:
    """<dependency> straight inside <dependencies> (NuGet 1.x/2.x) is a group without framework."""
    manifest = read_manifest(document('<dependencies><dependency id="Old" version="1.0"/></dependencies>'))
    assert manifest.dependency_groups == (DependencyGroup("", (Dependency("Old", "1.0"),)),)


def test_elements_of_another_namespace_are_ignored() -> None:
    """Only metadata's own namespace counts, as NuGet reads it."""
    manifest = read_manifest(document('<x:description xmlns:x="urn:other">no</x:description>'))
    assert "description" not in manifest.fields


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ('<dependencies><dependency version="1.0"/></dependencies>', "without an id"),
        ("<title>a</title><title>b</title>", "more than one <title>"),
    ],
)
def test_bad_metadata_is_refused(metadata: str, message: str) -> None:
    """A dependency without an id, or a field given twice, is refused by name."""
    with pytest.raises(NuspecError, match=message):
        read_manifest(document(metadata))
