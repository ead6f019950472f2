"""The rules every archive member name must pass, shared by extraction and the feed (pure).

A member name becomes a relative path only if it passes all of them: no NUL or control
characters, valid UTF-8, at most ``max_length`` bytes, '/' as the only separator, not
absolute, no '..' component, no drive letter, no component longer than Linux allows.
The tentacle applies them before writing a byte (tentacle.packages.extraction); the
server applies them when a package is pushed, so a package no tentacle could extract is
refused at the door.

A zip member's name without the UTF-8 flag is read as UTF-8 when it is (`zip_member_name`).
Names inside a ``.nupkg`` are URI-escaped by NuGet 2.x ``pack`` (``my%20page.html``), and
NuGet decodes them on install (``Uri.UnescapeDataString`` whenever a name holds '%').
`member_path` with ``percent_encoded`` does the same, once, and then applies every rule to
the decoded name, so ``%2e%2e%2f`` is refused exactly as ``../`` is.

`ArchiveError` lives here, not with the readers, because both programs raise it.
"""

from __future__ import annotations

import re
import stat
from urllib.parse import unquote

from tentacle.errors import InvalidInput

# Linux NAME_MAX: a longer component could not be created anyway.
MAX_COMPONENT_BYTES = 255

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"[A-Za-z]:")
SPECIAL_MODES = {
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "device file",
    stat.S_IFBLK: "device file",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "special member",
}


class ArchiveError(InvalidInput):
    """The archive breaks a rule: ``rule`` names it, ``member`` the entry (None: the archive)."""

    def __init__(self, rule: str, detail: str, *, member: str | None = None) -> None:
        where = "archive" if member is None else f"member {member!r}"
        super().__init__(f"{where} breaks rule '{rule}': {detail}", details={"rule": rule, "member": member})
        self.rule = rule
        self.member = member


_UTF8_FLAG = 0x800


def zip_member_name(stored: str, flag_bits: int) -> str:
    """A zip member's name as NuGet and unzip read it on Linux.

    Python's zipfile decodes a name without the UTF-8 flag as CP437; .NET and Mono on Linux
    (so NuGet) and Info-ZIP read such bytes as UTF-8, and NuGet 2.x on Mono writes non-ASCII
    names so. The name is therefore read as UTF-8 when its bytes are UTF-8, as CP437 otherwise.
    """
    if flag_bits & _UTF8_FLAG or stored.isascii():
        return stored
    try:
        return stored.encode("cp437").decode("utf-8")
    except UnicodeError:
        return stored


def decoded_name(name: str) -> str:
    """A .nupkg member's name as NuGet reads it: percent-escapes decoded once, as UTF-8."""
    if "%" not in name:
        return name
    try:
        return unquote(name, errors="strict")
    except UnicodeDecodeError as exc:
        detail = "its percent-escapes do not decode to UTF-8"
        raise ArchiveError("name encoding", detail, member=name) from exc


def member_path(name: str, is_dir: bool, max_length: int, *, percent_encoded: bool = False) -> str:
    """The normalised relative path of a member; ArchiveError (naming the stored name) if hostile."""
    text = decoded_name(name) if percent_encoded else name
    try:
        return _checked_path(text, is_dir, max_length)
    except ArchiveError as exc:
        if text == name:
            raise
        shown = f"{exc.message.partition(': ')[2]} (the name decodes to {text!r})"
        raise ArchiveError(exc.rule, shown, member=name) from exc


def _checked_path(name: str, is_dir: bool, max_length: int) -> str:
    _check_characters(name, max_length)
    if name.startswith("/"):
        raise ArchiveError("absolute path", "names must be relative", member=name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(".. component", "names must not climb out with '..'", member=name)
    if parts and _DRIVE.match(parts[0]):
        raise ArchiveError("drive letter", "names must not start with a drive", member=name)
    if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in parts):
        detail = f"a component is longer than {MAX_COMPONENT_BYTES} bytes"
        raise ArchiveError("name too long", detail, member=name)
    if not parts and not is_dir:
        raise ArchiveError("empty name", "a file needs a name", member=name)
    return "/".join(parts)


def _check_characters(name: str, max_length: int) -> None:
    if "\x00" in name:
        raise ArchiveError("NUL in name", "names must not contain NUL", member=name)
    if _CONTROL.search(name):
        raise ArchiveError("control character in name", "names must be printable", member=name)
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:  # tar names that are not UTF-8 decode to surrogates
        raise ArchiveError("name encoding", "names must be UTF-8", member=name) from exc
    if len(encoded) > max_length:
        detail = f"{len(encoded)} bytes, more than {max_length}"
        raise ArchiveError("name too long", detail, member=name)
    if "\\" in name:
        raise ArchiveError("backslash", "names must use / as the separator", member=name)


def zip_member_kind(name: str, unix_mode: int) -> str:
    """ "file", "dir", or the rule a special zip member breaks, from its name and Unix mode."""
    file_type = stat.S_IFMT(unix_mode)
    if file_type in SPECIAL_MODES:
        return SPECIAL_MODES[file_type]
    if name.endswith("/") or file_type == stat.S_IFDIR:
        return "dir"
    # No Unix mode at all (0) is how non-Unix tools write regular files.
    return "file" if file_type in (0, stat.S_IFREG) else "special member"


def is_nuget_metadata(path: str) -> bool:
    """NuGet's own packaging parts, which are not package content (compared as NuGet does)."""
    lowered = path.lower()
    return (
        lowered in ("[content_types].xml", "_rels", "package")
        or lowered.startswith(("_rels/", "package/"))
        or lowered.endswith(".psmdcp")
    )
