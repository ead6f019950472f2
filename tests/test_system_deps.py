"""tools/system-deps.sh: what `make test` installs on a bare machine, and how.

No package is installed or removed here: `apt-get`, `sudo` and `id` are small scripts that
write down how they were called, on a PATH that holds nothing else (so a real sudo of this
machine cannot be found), and SYSTEM_DEPS_ASSUME_MISSING plays the missing packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "system-deps.sh"


def _fake_bin(root: Path, uid: int, sudo: bool) -> Path:
    """A PATH folder with a recording apt-get (and sudo), an `id` saying `uid`, and bash's helpers."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    calls = root / "calls"
    scripts = {
        "id": f"#!/bin/sh\necho {uid}\n",
        "apt-get": f'#!/bin/sh\necho "apt-get $*" >>{calls}\n',
    }
    if sudo:
        scripts["sudo"] = f'#!/bin/sh\necho "sudo $1" >>{calls}\nexec "$@"\n'
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for tool in ("env", "sh"):
        found = shutil.which(tool)
        assert found is not None, f"{tool} is part of every Debian machine"
        (bin_dir / tool).symlink_to(found)
    return bin_dir


def _run(tmp_path: Path, group: str, missing: str, uid: int, sudo: bool) -> tuple[int, str, list[str]]:
    """Run the script; returns (exit code, stderr, the recorded calls)."""
    bin_dir = _fake_bin(tmp_path, uid, sudo)
    env = {"PATH": str(bin_dir), "PYTHON": sys.executable, "SYSTEM_DEPS_ASSUME_MISSING": missing}
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run([bash, str(SCRIPT), group], env=env, capture_output=True, text=True, timeout=60)
    calls = tmp_path / "calls"
    return done.returncode, done.stderr, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        (0, ["apt-get update -qq", "apt-get install -y -qq --no-install-recommends python3-venv"]),
        (
            1000,
            [
                "sudo apt-get",
                "apt-get update -qq",
                "sudo env",
                "apt-get install -y -qq --no-install-recommends python3-venv",
            ],
        ),
    ],
    ids=["root", "sudo"],
)
def test_it_installs_exactly_what_is_missing_as_root_or_through_sudo(
    tmp_path: Path, uid: int, expected: list[str]
) -> None:
    """apt-get update, then one install of exactly the missing packages: itself as root, else via sudo."""
    code, err, calls = _run(tmp_path, "build", "python3-venv", uid=uid, sudo=True)
    assert code == 0, err
    assert calls == expected


def test_without_root_or_sudo_one_line_names_the_packages(tmp_path: Path) -> None:
    """Neither root nor sudo: exit 1 and one line naming every missing package; nothing runs."""
    code, err, calls = _run(tmp_path, "test", "python3-venv postgresql npm", uid=1000, sudo=False)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for package in ("python3-venv", "postgresql", "npm"):
        assert package in lines[0]
    assert "not root and no sudo" in lines[0]
    assert calls == []


def test_the_test_group_covers_the_build_group_and_later_issues_packages(tmp_path: Path) -> None:
    """`test` includes `build`, PostgreSQL, Mono and Node; a present package is not installed again."""
    missing = "python3-venv postgresql mono-complete nodejs npm"
    code, err, calls = _run(tmp_path, "test", missing, uid=0, sudo=False)
    assert code == 0, err
    installed = calls[-1].split()[5:]
    assert set(missing.split()) <= set(installed)
    # The checks look in /usr/sbin and /sbin too, where nginx lives (the tests need it there).
    if os.path.exists("/usr/sbin/nginx"):
        assert "nginx-light" not in installed


def test_nothing_missing_means_no_apt_get(tmp_path: Path) -> None:
    """When every package is present the script does nothing (make test stays fast)."""
    code, err, calls = _run(tmp_path, "build", "", uid=1000, sudo=False)
    assert code == 0, err
    assert calls == []
