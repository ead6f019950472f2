"""What interrupted work leaves in the package cache and the work folders, and its removal.

A tentacle killed (kill -9, power cut, full disk) in the middle of a download or an
extraction leaves files behind. Some are worth keeping: a fresh ``.part`` and its
``.part.json`` are resumed by the next download of that package. The rest is litter:

    partial/<sha512>.part           not touched for `PARTIAL_MAX_AGE`: nobody will resume it
    partial/<sha512>.part.json      a validator whose ``.part`` is gone
    partial/*.tmp                   a validator half written (killed between write and rename)
    work/<task>/.<name>.partial-*   an extraction cut short (it is renamed into place only whole)
    work/<task>/.tentacle-script-*  the file of a script whose step was running

`sweep_cache` removes the first three (never those of a download under way: ``held``);
the daemon calls it when it starts and the cache after every failed download.
`sweep_work` removes the last two; the runner calls it when it loads its tasks, before
any step can run. Blocking file I/O, for a worker thread; no import beyond the
standard library, so that an idle tentacle can run it at start for nothing.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Collection
from pathlib import Path
from typing import Final

from tentacle.common.logs import event

log = logging.getLogger(__name__)

PARTIAL_MAX_AGE: Final = 24 * 3600.0  # a partial nobody resumed for this long is abandoned
PART: Final = ".part"
META: Final = ".part.json"
TEMP: Final = ".tmp"
# How tentacle.packages.extraction names its private folders, and tentacle.runner.scripts its files.
WORK_LITTER: Final = (".partial-", ".tentacle-script-")


def sweep_cache(root: Path, max_age: float = PARTIAL_MAX_AGE, held: Collection[str] = ()) -> list[Path]:
    """Remove the cache's litter under ``root`` (see the module doc); the paths removed.

    ``held``: SHA-512s downloading now, whose files are left alone.
    """
    folder = root / "partial"
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    cutoff = time.time() - max_age
    litter = {path for path in entries if path.name[:128] not in held and _litter(path, cutoff)}
    litter |= {path.with_name(path.name + ".json") for path in litter if path.name.endswith(PART)}
    removed = [path for path in sorted(litter) if _remove(path)]
    if removed:
        event(log, "package.leftovers_removed", files=len(removed), folder=folder)
    return removed


def _litter(path: Path, cutoff: float) -> bool:
    """Whether a file of the partial folder is litter."""
    name = path.name
    try:
        if name.endswith(TEMP):
            return True
        if name.endswith(META):
            return not path.with_name(name.removesuffix(META) + PART).exists()
        if name.endswith(PART):
            return path.stat().st_mtime < cutoff
    except OSError:
        return False
    return False


def sweep_work(work_root: Path) -> list[Path]:
    """Remove what interrupted extractions and steps left in the task folders under ``work_root``."""
    try:
        tasks = [path for path in work_root.iterdir() if path.is_dir() and not path.is_symlink()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed: list[Path] = []
    for task in tasks:
        with contextlib.suppress(OSError):
            found = [p for p in task.iterdir() if p.name.startswith(".") and _work_litter(p.name)]
            removed += [path for path in found if _remove(path)]
    if removed:
        event(log, "package.leftovers_removed", files=len(removed), folder=work_root)
    return removed


def _work_litter(name: str) -> bool:
    """Whether a hidden name in a task's work folder is one of ours left behind."""
    return any(mark in name for mark in WORK_LITTER)


def _remove(path: Path) -> bool:
    """Remove a file or a folder (not through a link); whether it went."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        event(log, "package.leftover_kept", logging.WARNING, path=path, reason=str(exc))
        return False
    return True
