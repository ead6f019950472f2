"""Running a tentacle as its own process, so that a test can kill -9 it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_tentacle(home: Path, log: Path) -> subprocess.Popen[bytes]:
    """`tentacle --home HOME run` in the background, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tentacle", "--home", str(home), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
