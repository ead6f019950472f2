"""Safe extraction of package archives, and nuspec parsing, on real archive files."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tentacle.packages.archives import DEFAULT_LIMITS, ArchiveError, Limits
from tentacle.packages.extraction import DestinationError, ExtractionReport, extract
from tentacle.protocol.nuspec import NuspecError, NuspecInfo, parse_nuspec

NUSPEC = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">'
    b"<metadata><id>Foo.Bar</id><version>1.2.3</version><authors>me</authors></metadata>"
    b"</package>"
)
# Highly compressible, so a few MiB make a small archive with a high ratio.
BOMB = bytes(8 * 1024 * 1024)

Member = tuple["str | zipfile.ZipInfo", bytes]


# --- archive builders --------------------------------------------------------------------


def make_zip(path: Path, members: list[Member]) -> Path:
    """A deflated zip holding the given (name or ZipInfo, data) members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def zip_info(name: str, mode: int) -> zipfile.ZipInfo:
    """A deflated zip member carrying a Unix mode (file type and permissions)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def tar_file(name: str, data: bytes = b"", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    """A regular tar member."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def tar_special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    """A tar member of the given type (link, device, FIFO, directory)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o755
    return info, b""


def make_targz(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A gzip-compressed pax tar holding the given members, written by hand."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def make_archive(fmt: str, folder: Path, files: list[tuple[str, bytes]]) -> Path:
    """A zip or tar.gz of regular files with exactly these names."""
    if fmt == "zip":
        return make_zip(folder / "in" / "pkg.zip", list(files))
    return make_targz(folder / "in" / "pkg.tar.gz", [tar_file(n, d) for n, d in files])


def assert_refused(archive: Path, folder: Path, rule: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Extraction fails naming ``rule``, and nothing appears beside or at dest."""
    out = folder / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(ArchiveError) as caught:
        extract(archive, out / "pkg", limits)
    assert caught.value.rule == rule
    assert f"'{rule}'" in str(caught.value)
    assert list(out.iterdir()) == []


def mode_of(path: Path) -> int:
    """Permission bits of a path."""
    return stat.S_IMODE(path.stat().st_mode)


def patch_zip_size(path: Path, name: str, file_size: int) -> None:
    """Rewrite a member's uncompressed size in its local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        local = archive.getinfo(name).header_offset
    struct.pack_into("<L", data, local + 22, file_size)
    central = data.find(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(name)] != name.encode():
        central = data.find(b"PK\x01\x02", central + 1)
    struct.pack_into("<L", data, central + 24, file_size)
    path.write_bytes(bytes(data))


# --- attacks -----------------------------------------------------------------------------

HOSTILE_NAMES = {
    "absolute path": "/etc/evil.txt",
    ".. component": "a/../../evil.txt",
    "backslash": "a\\..\\evil.txt",
    "drive letter": "C:/evil.txt",
    "control character in name": "evil\x1b[2J.txt",
}


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
@pytest.mark.parametrize("rule", list(HOSTILE_NAMES))
def test_hostile_name_is_refused(tmp_path: Path, fmt: str, rule: str) -> None:
    """A member name that could escape dest or confuse a terminal is refused by rule."""
    archive = make_archive(fmt, tmp_path, [("ok.txt", b"fine"), (HOSTILE_NAMES[rule], b"x")])
    assert_refused(archive, tmp_path, rule)


def test_nul_in_zip_name_is_refused(tmp_path: Path) -> None:
    """A zip name with a NUL (which zipfile would silently cut) is refused."""
    archive = make_zip(tmp_path / "in" / "pkg.zip", [("ok.txt", b"a"), ("evilXname.txt", b"b")])
    archive.write_bytes(archive.read_bytes().replace(b"evilXname", b"evil\x00name"))
    assert_refused(archive, tmp_path, "NUL in name")


def test_nul_in_tar_name_is_refused(tmp_path: Path) -> None:
    """A tar name carrying a NUL through a pax path record is refused."""
    info, data = tar_file("placeholder.txt", b"x")
    info.pax_headers = {"path": "evil\x00name.txt"}
    archive = make_targz(tmp_path / "in" / "pkg.tar.gz", [tar_file("ok.txt", b"a"), (info, data)])
    assert_refused(archive, tmp_path, "NUL in name")


@pytest.mark.parametrize(
    ("rule", "kind", "linkname"),
    [
        ("symlink", tarfile.SYMTYPE, "/etc/passwd"),
        ("hardlink", tarfile.LNKTYPE, "ok.txt"),
        ("device file", tarfile.CHRTYPE, ""),
        ("device file", tarfile.BLKTYPE, ""),
        ("fifo", tarfile.FIFOTYPE, ""),
        ("special member", tarfile.CONTTYPE, ""),
    ],
)
def test_special_tar_member_is_refused(tmp_path: Path, rule: str, kind: bytes, linkname: str) -> None:
    """Only regular files and directories may come out of a tar."""
    members = [tar_file("ok.txt", b"a"), tar_special("evil", kind, linkname)]
    archive = make_targz(tmp_path / "in" / "pkg.tar.gz", members)
    assert_refused(archive, tmp_path, rule)


def test_symlink_in_zip_is_refused(tmp_path: Path) -> None:
    """A zip member whose Unix mode says symlink is refused."""
    link = zip_info("evil", stat.S_IFLNK | 0o777)
    archive = make_zip(tmp_path / "in" / "pkg.zip", [("ok.txt", b"a"), (link, b"/etc/passwd")])
    assert_refused(archive, tmp_path, "symlink")


def test_sparse_tar_member_is_refused(tmp_path: Path) -> None:
    """A sparse tar member (holes its stored size hides) is refused."""
    info, data = tar_file("sparse.bin", b"x")
    info.pax_headers = {"GNU.sparse.map": "0,1", "GNU.sparse.size": "4096"}
    archive = make_targz(tmp_path / "in" / "pkg.tar.gz", [(info, data)])
    assert_refused(archive, tmp_path, "special member")


def test_encrypted_zip_member_is_refused(tmp_path: Path) -> None:
    """A zip member flagged as encrypted is refused up front."""
    archive = make_zip(tmp_path / "in" / "pkg.zip", [("secret.txt", b"x")])
    data = bytearray(archive.read_bytes())
    for offset in (6, data.find(b"PK\x01\x02") + 8):  # local, then central flag bits
        data[offset] |= 0x1
    archive.write_bytes(bytes(data))
    assert_refused(archive, tmp_path, "encrypted")


def test_duplicate_zip_names_after_normalisation_are_refused(tmp_path: Path) -> None:
    """Two zip members naming the same path ("d/a" and "./d//a") are refused."""
    members: list[Member] = [("d/a.txt", b"one"), ("./d//a.txt", b"two")]
    archive = make_zip(tmp_path / "in" / "pkg.zip", members)
    assert_refused(archive, tmp_path, "duplicate name")


def test_duplicate_tar_names_are_refused(tmp_path: Path) -> None:
    """A tar holding the same name twice (the later one would win) is refused."""
    members = [tar_file("a.txt", b"one"), tar_file("a.txt", b"two")]
    archive = make_targz(tmp_path / "in" / "pkg.tar.gz", members)
    assert_refused(archive, tmp_path, "duplicate name")


def test_file_used_as_directory_is_refused(tmp_path: Path) -> None:
    """A file and a member inside it ("a", then "a/b") cannot both be extracted."""
    archive = make_zip(tmp_path / "in" / "pkg.zip", [("a", b"file"), ("a/b", b"inside")])
    assert_refused(archive, tmp_path, "path conflict")


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_entry_count_limit(tmp_path: Path, fmt: str) -> None:
    """An archive with more members than max_entries is refused."""
    archive = make_archive(fmt, tmp_path, [(f"f{i}", b"x") for i in range(4)])
    assert_refused(archive, tmp_path, "entry count", Limits(max_entries=3))


def as_zip64(data: bytes) -> bytes:
    """The same zip with its end-of-central-directory moved into ZIP64 records."""
    at = data.rfind(b"PK\x05\x06")
    count, size, offset = struct.unpack_from("<4s4H2LH", data, at)[4:7]
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:at] + record + locator + end


@pytest.mark.parametrize("zip64", [False, True])
def test_zip_entry_count_is_checked_before_zipfile_loads_the_directory(tmp_path: Path, zip64: bool) -> None:
    """Too many central-directory records are refused before zipfile parses them all."""
    archive = make_archive("zip", tmp_path, [(f"f{i}", b"x") for i in range(5)])
    data = bytearray(as_zip64(archive.read_bytes()) if zip64 else archive.read_bytes())
    fifth = data.rfind(b"PK\x01\x02")
    data[fifth : fifth + 4] = b"XXXX"  # zipfile would call this a corrupt archive
    archive.write_bytes(bytes(data))
    assert_refused(archive, tmp_path, "entry count", Limits(max_entries=3))


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_total_size_limit(tmp_path: Path, fmt: str) -> None:
    """Members adding up to more than max_total_bytes are refused."""
    archive = make_archive(fmt, tmp_path, [("a", b"a" * 600), ("b", b"b" * 600)])
    assert_refused(archive, tmp_path, "total size", Limits(max_total_bytes=1000))


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_compression_ratio_bomb(tmp_path: Path, fmt: str) -> None:
    """8 MiB of zeros in a few KiB breaks the default 200:1 ratio limit."""
    archive = make_archive(fmt, tmp_path, [("ok.txt", b"a"), ("bomb.bin", BOMB)])
    assert archive.stat().st_size < 64 * 1024
    assert_refused(archive, tmp_path, "compression ratio")


def test_tar_stream_is_bounded_beyond_declared_sizes(tmp_path: Path) -> None:
    """Tar headers that expand past the ratio budget are refused while reading them."""
    members = [tar_file(f"f{i}", b"x") for i in range(20)]
    archive = make_targz(tmp_path / "in" / "pkg.tar.gz", members)
    limits = Limits(max_ratio=2, ratio_grace_bytes=0)
    assert_refused(archive, tmp_path, "compression ratio", limits)


def test_oversized_tar_header_block_is_refused(tmp_path: Path) -> None:
    """A pax header larger than 1 MiB is refused before tarfile reads it into memory."""
    info, data = tar_file("a.txt", b"x")
    info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
    archive = make_targz(tmp_path / "in" / "pkg.tar.gz", [(info, data)])
    assert_refused(archive, tmp_path, "header size")


def test_zip_header_under_declaring_size_is_refused(tmp_path: Path) -> None:
    """A zip whose header claims fewer bytes than its data holds fails while writing."""
    data = os.urandom(64 * 1024)
    archive = make_zip(tmp_path / "in" / "pkg.zip", [("ok.txt", b"a"), ("liar.bin", data)])
    patch_zip_size(archive, "liar.bin", 1000)
    assert_refused(archive, tmp_path, "declared size")


def test_zip_header_over_declaring_size_is_refused(tmp_path: Path) -> None:
    """A zip whose header claims more bytes than its data holds is caught by counting."""
    archive = make_zip(tmp_path / "in" / "pkg.zip", [("ok.txt", b"a"), ("liar.bin", b"b" * 1000)])
    patch_zip_size(archive, "liar.bin", 5000)
    assert_refused(archive, tmp_path, "declared size")


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_truncated_archive_is_refused(tmp_path: Path, fmt: str) -> None:
    """An archive cut short (a failed download) is refused and leaves nothing."""
    archive = make_archive(fmt, tmp_path, [("ok.txt", b"a"), ("big.bin", os.urandom(64 * 1024))])
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert_refused(archive, tmp_path, "corrupt archive")


def test_content_not_matching_its_extension_is_refused(tmp_path: Path) -> None:
    """A gzip file named .zip is refused by its magic bytes."""
    archive = make_targz(tmp_path / "in" / "pkg.tar.gz", [tar_file("a.txt", b"a")])
    assert_refused(archive.rename(archive.with_name("pkg.zip")), tmp_path, "format")


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    """Only .nupkg, .zip, .tar.gz and .tgz are accepted."""
    archive = make_zip(tmp_path / "in" / "pkg.rar", [("a.txt", b"a")])
    assert_refused(archive, tmp_path, "format")


def test_nupkg_without_nuspec_is_refused(tmp_path: Path) -> None:
    """A .nupkg must carry its .nuspec at the root."""
    archive = make_zip(tmp_path / "in" / "Foo.nupkg", [("lib/Foo.nuspec", NUSPEC)])
    assert_refused(archive, tmp_path, "nuspec")


def test_nupkg_with_a_dtd_in_its_nuspec_is_refused(tmp_path: Path) -> None:
    """A .nupkg whose nuspec declares entities is refused before anything is written."""
    nuspec = b'<!DOCTYPE p [<!ENTITY a "aaaa">]><package><metadata/></package>'
    archive = make_zip(tmp_path / "in" / "Foo.nupkg", [("Foo.nuspec", nuspec)])
    assert_refused(archive, tmp_path, "nuspec")


# --- happy paths -------------------------------------------------------------------------


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that would hide group and other bits unless modes are set explicitly."""
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def test_nupkg_skips_nuget_metadata_and_keeps_the_nuspec(tmp_path: Path) -> None:
    """NuGet's packaging parts are skipped; the nuspec and content are extracted."""
    members: list[Member] = [
        ("[Content_Types].xml", b"<Types/>"),
        ("_rels/.rels", b"<Relationships/>"),
        ("package/services/metadata/core-properties/abc.psmdcp", b"<coreProperties/>"),
        ("Foo.Bar.nuspec", NUSPEC),
        ("lib/net8.0/Foo.Bar.dll", b"MZ"),
        ("content/readme.txt", b"hello"),
    ]
    archive = make_zip(tmp_path / "Foo.Bar.1.2.3.nupkg", members)
    dest = tmp_path / "pkg"
    report = extract(archive, dest)
    assert report == ExtractionReport(3, len(NUSPEC) + 7, 3, NuspecInfo("Foo.Bar", "1.2.3"))
    assert sorted(p.name for p in dest.iterdir()) == ["Foo.Bar.nuspec", "content", "lib"]
    assert (dest / "content" / "readme.txt").read_bytes() == b"hello"


@pytest.mark.usefixtures("strict_umask")
def test_zip_extracts_nested_tree_with_modes(tmp_path: Path) -> None:
    """A zip's files, explicit and implied directories and executable bit come out."""
    members: list[Member] = [
        (zip_info("bin/", stat.S_IFDIR | 0o700), b""),
        (zip_info("bin/run.sh", stat.S_IFREG | 0o700), b"#!/bin/sh\n"),
        ("docs/deep/er/readme.txt", b"text"),
    ]
    dest = tmp_path / "pkg"
    report = extract(make_zip(tmp_path / "app.zip", members), dest)
    assert report == ExtractionReport(files=2, bytes=14, skipped_metadata=0)
    assert (dest / "docs/deep/er/readme.txt").read_bytes() == b"text"
    assert mode_of(dest / "bin/run.sh") == 0o755
    assert mode_of(dest / "docs/deep/er/readme.txt") == 0o644
    assert {mode_of(dest / d) for d in ("", "bin", "docs", "docs/deep")} == {0o755}


@pytest.mark.usefixtures("strict_umask")
@pytest.mark.parametrize("name", ["app.tar.gz", "app.tgz"])
def test_targz_extracts_nested_tree_with_modes(tmp_path: Path, name: str) -> None:
    """A tar.gz with "./" names, nested dirs, setuid and exec bits comes out safely."""
    members = [
        tar_special("./", tarfile.DIRTYPE),
        tar_special("./etc", tarfile.DIRTYPE),
        tar_file("./etc/app/config.json", b"{}", mode=0o666),
        tar_file("./bin/tool", b"\x7fELF", mode=0o4775),
    ]
    dest = tmp_path / "pkg"
    report = extract(make_targz(tmp_path / name, members), dest)
    assert report == ExtractionReport(files=2, bytes=6, skipped_metadata=0)
    assert (dest / "etc/app/config.json").read_bytes() == b"{}"
    assert mode_of(dest / "etc/app/config.json") == 0o644
    assert mode_of(dest / "bin/tool") == 0o755
    assert {mode_of(dest / d) for d in ("", "etc", "etc/app", "bin")} == {0o755}
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, "pkg"]


def test_zip64_end_records_are_read(tmp_path: Path) -> None:
    """A zip whose end of central directory is in ZIP64 records extracts normally."""
    archive = make_zip(tmp_path / "a.zip", [("a.txt", b"a"), ("b/c.txt", b"c")])
    archive.write_bytes(as_zip64(archive.read_bytes()))
    assert extract(archive, tmp_path / "pkg").files == 2
    assert (tmp_path / "pkg" / "b" / "c.txt").read_bytes() == b"c"


def test_small_compressible_files_are_not_ratio_checked(tmp_path: Path) -> None:
    """A file below the grace size may compress far better than 200:1."""
    archive = make_zip(tmp_path / "a.zip", [("zeros.bin", bytes(512 * 1024))])
    assert extract(archive, tmp_path / "pkg").bytes == 512 * 1024


def test_empty_existing_dest_is_replaced(tmp_path: Path) -> None:
    """An existing empty dest directory receives the tree."""
    (tmp_path / "pkg").mkdir()
    extract(make_zip(tmp_path / "a.zip", [("a.txt", b"a")]), tmp_path / "pkg")
    assert (tmp_path / "pkg" / "a.txt").read_bytes() == b"a"


def test_non_empty_dest_is_refused_and_kept(tmp_path: Path) -> None:
    """A dest with content is an error and its content stays as it was."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "keep.txt").write_bytes(b"mine")
    archive = make_zip(tmp_path / "a.zip", [("keep.txt", b"theirs")])
    with pytest.raises(DestinationError, match="not an empty directory"):
        extract(archive, tmp_path / "pkg")
    assert (tmp_path / "pkg" / "keep.txt").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "pkg"]


# --- nuspec ------------------------------------------------------------------------------

NUGET_NAMESPACES = [
    "http://schemas.microsoft.com/packaging/2010/07/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2011/08/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2011/10/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2012/06/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2013/01/nuspec.xsd",
    "http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd",
]


def nuspec(metadata: str, namespace: str = "") -> bytes:
    """A nuspec document with the given metadata content."""
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    return f"<package{xmlns}><metadata>{metadata}</metadata></package>".encode()


@pytest.mark.parametrize("namespace", [*NUGET_NAMESPACES, ""])
def test_nuspec_in_any_nuget_namespace(namespace: str) -> None:
    """Every nuspec schema namespace NuGet used, and none, yields the id and version."""
    document = nuspec("<id> Foo.Bar </id><title>x</title><version>1.0.0-beta.1+b</version>", namespace)
    assert parse_nuspec(document) == NuspecInfo("Foo.Bar", "1.0.0-beta.1+b")


def test_nuspec_namespace_on_metadata_only() -> None:
    """Legacy packages put the namespace on <metadata>; id and version follow it."""
    document = f'<package><metadata xmlns="{NUGET_NAMESPACES[0]}"><id>A</id><version>1</version>'
    assert parse_nuspec(f"{document}</metadata></package>".encode()) == NuspecInfo("A", "1")


def test_nuspec_in_utf16_with_declaration() -> None:
    """The encoding declared by the document (here UTF-16 with a BOM) is honoured."""
    text = '<?xml version="1.0" encoding="utf-16"?>' + nuspec("<id>A</id><version>2</version>").decode()
    assert parse_nuspec(text.encode("utf-16")) == NuspecInfo("A", "2")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (nuspec("<version>1</version>"), "no <id>"),
        (nuspec("<id>A</id>"), "no <version>"),
        (nuspec("<id>A</id><id>B</id><version>1</version>"), "more than one <id>"),
        (nuspec("<id>../evil</id><version>1</version>"), "not a NuGet package id"),
        (nuspec("<id>A</id><version>1 2</version>"), "not a version"),
        (b"<manifest><metadata/></manifest>", "expected <package>"),
        (b"<package><metadata><id>A</id></metadata>", "not well-formed"),
        (b"<package><metadata><id>&foo;</id></metadata></package>", "not well-formed"),
    ],
)
def test_bad_nuspec_is_refused(document: bytes, message: str) -> None:
    """A nuspec that is incomplete, ambiguous or malformed raises NuspecError."""
    with pytest.raises(NuspecError, match=message):
        parse_nuspec(document)


def test_nuspec_dtd_is_refused() -> None:
    """A billion-laughs document is refused at its DTD, before any expansion."""
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    document = (
        f'<!DOCTYPE package [<!ENTITY l0 "lol">{entities}]>'
        + nuspec("<id>&l9;</id><version>1</version>").decode()
    )
    with pytest.raises(NuspecError, match="DTD") as caught:
        parse_nuspec(document.encode())
    assert isinstance(caught.value, ValueError)


def test_nuspec_external_dtd_is_refused() -> None:
    """A document pointing at an external DTD is refused without fetching it."""
    document = b'<!DOCTYPE package SYSTEM "http://127.0.0.1:9/x.dtd">' + nuspec("<id>A</id>")
    with pytest.raises(NuspecError, match="DTD"):
        parse_nuspec(document)


def test_oversized_nuspec_is_refused() -> None:
    """A document over 1 MiB is refused before parsing."""
    document = nuspec("<id>A</id><version>1</version>" + " " * (1024 * 1024))
    with pytest.raises(NuspecError, match="more than the 1048576"):
        parse_nuspec(document)
