"""`server-shim package push` and `server-shim feed export|add|list`.

These act on the instance's database and feed folder directly (like `token create`),
so they work whether or not the server is running.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from server_shim import server_config as cfg
from server_shim.cli.command import Command, LocalCommand
from server_shim.store import feed_export, spaces
from server_shim.store import feed_store as feed
from server_shim.store.database import Database
from server_shim.store.feed_staging import clean_stale
from server_shim.store.spaces import DEFAULT_SPACE
from tentacle.common.paths import InstancePaths
from tentacle.errors import TentacleError
from tentacle.protocol.process import BUILTIN_FEED


def _push_all(db: Database, feed_dir: Path, files: list[Path]) -> int:
    removed = clean_stale(feed_dir)
    if removed:
        print(f"server-shim: removed {removed} temp file(s) left by an interrupted push", file=sys.stderr)
    failed = 0
    for file in files:
        try:
            ref = feed.push(db, feed_dir, file)
        except TentacleError as exc:
            print(f"server-shim: error: {exc.message}", file=sys.stderr)
            failed += 1
            continue
        print(f"{ref.id} {ref.version} sha512={ref.sha512} size={ref.size}")
    if failed:
        print(f"server-shim: {failed} of {len(files)} files were not pushed", file=sys.stderr)
    return 1 if failed else 0


def _export(db: Database, paths: InstancePaths, args: argparse.Namespace) -> int:
    base_url = None if args.relative else args.base_url or cfg.load(paths).public_url
    report = feed_export.export(db, feed.store_dir(paths.state), args.dir, base_url)
    print(
        f"exported {report.packages} packages to {args.dir} for {report.base_url}: {report.copied} copied"
        f" ({report.bytes_copied} bytes), {report.skipped} already there"
    )
    if not args.base_url and not args.relative:
        print(
            f"server-shim: the export's URLs start with the server's public URL {report.base_url};"
            " pass --base-url with the URL where DIR is served",
            file=sys.stderr,
        )
    return 0


def _list(db: Database, as_json: bool, space: str) -> int:
    counted = len(db.sync(feed.packages))
    db.sync(spaces.require, space)
    mirrors = db.sync(feed.feed_mirrors, space)
    if as_json:
        items = [{"name": BUILTIN_FEED, "kind": "builtin", "packages": counted, "mirrors": []}]
        items += [{"name": name, "kind": "mirrors", "mirrors": urls} for name, urls in mirrors.items()]
        print(json.dumps(items, indent=2))
        return 0
    print(f"{'NAME':<20} {'KIND':<9} SOURCES")
    print(f"{BUILTIN_FEED:<20} {'builtin':<9} {counted} package files")
    for name, urls in mirrors.items():
        print(f"{name:<20} {'mirrors':<9} {' '.join(urls)}")
    return 0


class PackagePush(LocalCommand):
    """`package push FILE...`: one line per package, exit 1 if any file failed."""

    words = ("package", "push")
    help = "add .nupkg, .zip or .tar.gz files to the built-in feed"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "files", nargs="+", type=Path, metavar="FILE", help="ID.VERSION.zip|.tar.gz or any .nupkg"
        )

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        with self.database(paths) as db:
            return _push_all(db, feed.store_dir(paths.state), args.files)


class FeedExport(LocalCommand):
    """`feed export DIR`: a static NuGet v3 feed, written incrementally."""

    words = ("feed", "export")
    help = "write a static NuGet v3 feed (incremental)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("dir", type=Path, metavar="DIR")
        parser.add_argument(
            "--base-url",
            metavar="URL",
            help="the URL where DIR will be served; every URL in the feed starts with it"
            " (default: the server's public URL)",
        )
        parser.add_argument(
            "--relative",
            action="store_true",
            help="relative URLs and the flat container alone: for mirrors that only tentacles use",
        )

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        with self.database(paths) as db:
            return _export(db, paths, args)


class FeedAdd(LocalCommand):
    """`feed add NAME --mirror URL...`: a named feed of mirror candidates."""

    words = ("feed", "add")
    help = "name a feed of mirror candidates (replaces one of that name)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name")
        parser.add_argument(
            "--mirror", action="append", required=True, metavar="URL", help="a NuGet v3 service index URL"
        )
        _space_flag(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        with self.database(paths) as db:
            db.sync(feed.add_feed, args.name, args.mirror, args.space)
        print(f"feed {args.name}: {len(dict.fromkeys(args.mirror))} mirrors")
        return 0


class FeedList(LocalCommand):
    """`feed list [--json]`."""

    words = ("feed", "list")
    help = "list the feeds"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        _space_flag(parser)

    def run(self, paths: InstancePaths, args: argparse.Namespace) -> int:
        with self.database(paths) as db:
            return _list(db, args.json, args.space)


def _space_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--space", default=DEFAULT_SPACE, help="the space whose mirror feeds these are (default: Default)"
    )


COMMANDS: list[Command] = [PackagePush(), FeedExport(), FeedAdd(), FeedList()]
