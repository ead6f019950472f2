"""Tentacle: a deployment agent for Linux hosts, and the protocol it shares with server_shim."""

import os
import sys

__version__ = "0.1.0"


def _lean_frozenlist() -> None:
    """Load frozenlist's pure-Python FrozenList rather than its C++ extension.

    aiohttp keeps its signals and middlewares in FrozenLists; the extension links
    libstdc++, which alone keeps about 1.4 MB resident in every tentacle, idle or not
    (the idle benchmark's budget is 40 MB). The pure-Python class has the same interface
    and behaviour, and these lists are read a few times per request. The switch is
    frozenlist's own documented environment variable, set only while it loads, so that
    deployment scripts never see it.
    """
    if "frozenlist" in sys.modules:
        return
    name = "FROZENLIST_NO_EXTENSIONS"
    given = os.environ.get(name)
    os.environ[name] = given if given is not None else "1"
    try:
        import frozenlist  # noqa: F401  # loaded here, with the switch set
    finally:
        if given is None:
            del os.environ[name]


_lean_frozenlist()
