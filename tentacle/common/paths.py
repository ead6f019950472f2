"""Where an instance keeps its configuration, state, cache and logs.

--home DIR (or $TENTACLE_HOME / $SERVER_SHIM_HOME)   everything under DIR
root, under systemd                                 $CONFIGURATION_DIRECTORY, $STATE_DIRECTORY, ...
root                                                /etc/P, /var/lib/P, /var/cache/P, /var/log/P
other users                                         platformdirs' user directories
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_SYSTEMD = {
    "config": ("CONFIGURATION_DIRECTORY", "/etc"),
    "state": ("STATE_DIRECTORY", "/var/lib"),
    "cache": ("CACHE_DIRECTORY", "/var/cache"),
    "logs": ("LOGS_DIRECTORY", "/var/log"),
}


@dataclass(frozen=True)
class InstancePaths:
    """The four directories of one instance."""

    config: Path
    state: Path
    cache: Path
    logs: Path

    def create(self) -> None:
        """Make the directories: configuration 0750 (the service's group reads it), the rest 0700."""
        self.config.mkdir(mode=0o750, parents=True, exist_ok=True)
        for directory in (self.state, self.cache, self.logs):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def resolve(program: str, home: str | None, env: Mapping[str, str] | None = None) -> InstancePaths:
    """The directories for `program` ("tentacle" or "server-shim")."""
    env = os.environ if env is None else env
    home = home or env.get(program.upper().replace("-", "_") + "_HOME")
    if home:
        root = Path(home).expanduser().absolute()
        return InstancePaths(root, root / "state", root / "cache", root / "logs")
    if os.geteuid() == 0 or any(variable in env for variable, _ in _SYSTEMD.values()):
        # Under systemd the unit's *Directory= settings win, whichever user runs us.
        return InstancePaths(*(_system_dir(program, kind, env) for kind in _SYSTEMD))
    import platformdirs  # only here: a daemon with --home or under systemd never needs it

    return InstancePaths(
        Path(platformdirs.user_config_dir(program)),
        Path(platformdirs.user_state_dir(program)),
        Path(platformdirs.user_cache_dir(program)),
        Path(platformdirs.user_log_dir(program)),
    )


def _system_dir(program: str, kind: str, env: Mapping[str, str]) -> Path:
    variable, base = _SYSTEMD[kind]
    given = env.get(variable)
    # systemd passes a colon-separated list when a unit names several; ours names one.
    return Path(given.split(":")[0]) if given else Path(base) / program
