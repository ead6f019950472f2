"""Percent-encoded member names of NuGet 2.x packages: decoded once, then every rule applies."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tentacle.packages.extraction import extract
from tentacle.protocol.member_names import ArchiveError, decoded_name, member_path, zip_member_name

NUSPEC = (
    b'<?xml version="1.0"?><package><metadata><id>Old.Pkg</id><version>1.0.0</version>'
    b"<authors>me</authors><description>d</description></metadata></package>"
)


def nupkg(path: Path, names: list[str], *, ending: str = ".nupkg") -> Path:
    """A package holding a nuspec and one small file per name, names stored exactly as given."""
    target = path.with_suffix(ending)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Old.Pkg.nuspec", NUSPEC)
        for name in names:
            archive.writestr(name, name.encode())
    return target


def files_under(root: Path) -> list[str]:
    """Every file below root, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_nupkg_names_are_decoded_as_nuget_does(tmp_path: Path) -> None:
    """'my%20page.html' lands as 'my page.html'; '%25' decodes once, never twice."""
    archive = nupkg(tmp_path / "in" / "old", ["site/my%20page.html", "caf%C3%A9.txt", "100%2525.txt"])
    extract(archive, tmp_path / "out")
    assert files_under(tmp_path / "out") == ["100%25.txt", "Old.Pkg.nuspec", "café.txt", "site/my page.html"]
    assert (tmp_path / "out" / "site" / "my page.html").read_bytes() == b"site/my%20page.html"


def test_zip_names_are_not_decoded(tmp_path: Path) -> None:
    """Only NuGet packages carry escaped names: a plain .zip keeps '%20' as it is."""
    archive = nupkg(tmp_path / "in" / "plain", ["site/my%20page.html"], ending=".zip")
    extract(archive, tmp_path / "out")
    assert "site/my%20page.html" in files_under(tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("%2e%2e%2fevil.txt", ".. component"),
        ("content/%2E%2E/%2E%2E/evil.txt", ".. component"),
        ("%2Fetc%2Fpasswd", "absolute path"),
        ("a%5c..%5cevil.txt", "backslash"),
        ("evil%00.txt", "NUL in name"),
        ("evil%1b%5b2J.txt", "control character in name"),
        ("C%3a/evil.txt", "drive letter"),
        ("bad%C3%28.txt", "name encoding"),
    ],
)
def test_hostile_names_are_refused_after_decoding(tmp_path: Path, name: str, rule: str) -> None:
    """Every extraction rule holds for the decoded name; nothing is written."""
    archive = nupkg(tmp_path / "in" / "evil", ["ok.txt", name])
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError) as caught:
        extract(archive, tmp_path / "out" / "pkg")
    assert (caught.value.rule, caught.value.member) == (rule, name)
    assert list((tmp_path / "out").iterdir()) == []


def test_names_equal_after_decoding_are_duplicates(tmp_path: Path) -> None:
    """'a b.txt' and 'a%20b.txt' are one file to NuGet, so the package is refused."""
    archive = nupkg(tmp_path / "in" / "dup", ["a b.txt", "a%20b.txt"])
    with pytest.raises(ArchiveError) as caught:
        extract(archive, tmp_path / "out")
    assert caught.value.rule == "duplicate name"


def test_refusal_names_the_stored_and_the_decoded_name() -> None:
    """The message shows the name as stored and what it decodes to."""
    with pytest.raises(ArchiveError) as caught:
        member_path("%2e%2e%2fx", False, 1024, percent_encoded=True)
    assert "member '%2e%2e%2fx'" in caught.value.message
    assert "decodes to '../x'" in caught.value.message


def test_decoded_name_leaves_what_is_not_an_escape() -> None:
    """Like Uri.UnescapeDataString: '%zz', a lone '%' and '+' stay as they are."""
    assert decoded_name("100%zz+1%") == "100%zz+1%"
    assert decoded_name("plain.txt") == "plain.txt"


def test_zip_names_without_the_utf8_flag_are_read_as_utf8_when_they_are(tmp_path: Path) -> None:
    """NuGet 2.x on Mono writes UTF-8 names without the flag; they land as NuGet reads them."""
    archive = nupkg(tmp_path / "in" / "old", ["docs/cafXY.txt", "latin/\u00e0bc.txt"])
    raw = archive.read_bytes()
    # Same length, so every offset holds: 'XY' becomes the UTF-8 bytes of 'e' acute, flag unset.
    archive.write_bytes(raw.replace(b"cafXY", "caf\u00e9".encode()))
    extract(archive, tmp_path / "out")
    assert "docs/caf\u00e9.txt" in files_under(tmp_path / "out")


def test_zip_names_that_are_not_utf8_stay_cp437() -> None:
    """Bytes that are not UTF-8 keep zipfile's CP437 reading (DOS tools' names)."""
    stored = b"caf\x82.txt".decode("cp437")  # CP437's e acute, not UTF-8
    assert zip_member_name(stored, 0) == stored
    assert zip_member_name(stored, 0x800) == stored
