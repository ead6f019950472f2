"""Run benchmarks: ``python -m bench NAME [--quick]`` or ``python -m bench all [--quick]``.

Each benchmark is a module ``bench/NAME_bench.py`` with ``main(quick: bool) -> dict``: it prints
its own readable table, and this runner prints the dict it returns as the last line, one
JSON object (``{"benchmark": NAME, "figures": {...}, "ratio": x, "target": "...", "met": b}``).
``all`` runs every benchmark module present, in name order. Rigs shared with the tests
(servers, tentacles, nginx, the load generator) live in ``rigs/``, which is not shipped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

Benchmark = Callable[[bool], dict[str, Any]]
SUFFIX = "_bench"


def available() -> list[str]:
    """The benchmarks present: the modules of this package named ``*_bench``."""
    here = str(Path(__file__).parent)
    return sorted(
        info.name.removesuffix(SUFFIX) for info in pkgutil.iter_modules([here]) if info.name.endswith(SUFFIX)
    )


def load(name: str) -> Benchmark:
    """The ``main`` of ``bench/NAME_bench.py``."""
    return cast(Benchmark, importlib.import_module(f"bench.{name}{SUFFIX}").main)


def run(name: str, quick: bool) -> dict[str, Any]:
    """Run one benchmark and print its JSON line."""
    result = load(name)(quick)
    print(json.dumps(result), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the benchmarks asked for; 2 for an unknown name."""
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*names, "all"], help="a benchmark, or all of them")
    parser.add_argument("--quick", action="store_true", help="small sizes that finish within a minute")
    args = parser.parse_args(argv)
    for name in names if args.name == "all" else [args.name]:
        run(name, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
