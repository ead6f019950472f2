"""Files written atomically, with their permissions set before a byte lands.

`write_private` lives here rather than in `tentacle.net.pki` (which re-exports it) so that
the daemon can save its state without importing `cryptography`: an idle tentacle
never signs or parses a certificate, and that library alone weighs 8 MB resident.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file atomically with `mode`, never world-readable for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in the folder `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
