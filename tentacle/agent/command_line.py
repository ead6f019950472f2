"""The `tentacle` command line: parse, build the config, call one library function.

Commands that print one value print it alone on stdout. Exit codes: 0 ok,
1 failed, 2 usage, 78 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mimetypes
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tentacle.agent import agent_config as config_mod
from tentacle.agent.agent_config import ListenConfig
from tentacle.common.logs import setup_logging
from tentacle.common.paths import InstancePaths, resolve
from tentacle.errors import UsageError, exit_code_of


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tentacle",
        description="Deployment agent: runs the server's deployment plans on this host.",
    )
    parser.add_argument("--home", help="instance folder (default: $TENTACLE_HOME, else system or user dirs)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cert = sub.add_parser("new-certificate", help="make this tentacle's key pair and certificate")
    cert.add_argument("--force", action="store_true", help="replace an existing key (re-register afterwards)")
    sub.add_parser("show-thumbprint", help="print this tentacle's certificate thumbprint")
    _register_parser(sub)
    sub.add_parser("run", help="run the agent in the foreground (what systemd starts)")
    status = sub.add_parser("status", help="registration, mode, trust, connection and cache")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _service_parser(sub)
    return parser


def _register_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reg = sub.add_parser("register", help="register with a server using a token")
    reg.add_argument(
        "--server",
        required=True,
        action="append",
        help="the server's URL, e.g. https://deploy:8443; again for each node of a server with"
        " several nodes (any one registers; a polling tentacle keeps a connection to every node)",
    )
    reg.add_argument("--token", required=True, help="a registration token (server-shim token create)")
    reg.add_argument("--server-thumbprint", required=True, help="the server's SHA-256 thumbprint")
    reg.add_argument("--name", required=True, help="this machine's name on the server")
    reg.add_argument("--environment", action="append", default=[], help="an environment (repeatable)")
    reg.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    mode = reg.add_mutually_exclusive_group(required=True)
    mode.add_argument("--listen", metavar="HOST:PORT", help="listening mode: the server connects here")
    mode.add_argument("--polling", action="store_true", help="polling mode: this agent connects out")
    reg.add_argument("--public-hostname", help="the host name the server should use (listening)")
    reg.add_argument(
        "--force",
        action="store_true",
        help="replace the machine of the same name; needs a token made for it"
        " (`server-shim machines replace NAME` or `token create --machine NAME`)",
    )
    reg.add_argument("--space", default="Default", help="the space to register into (default: Default)")
    reg.add_argument(
        "--tenant", action="append", default=[], help="a tenant this machine serves (repeatable; must exist)"
    )
    reg.add_argument(
        "--tenant-tag",
        action="append",
        default=[],
        metavar="SET/TAG",
        help="serve every tenant with this tag, e.g. Region/EU (repeatable: one set OR, sets AND)",
    )
    reg.add_argument(
        "--tenanted-deployment",
        choices=("untenanted", "tenanted", "both"),
        help="which deployments this machine takes part in (default: tenanted when --tenant or"
        " --tenant-tag is given, else untenanted)",
    )


def _service_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = sub.add_parser("service", help="install or remove the systemd unit")
    actions = service.add_subparsers(dest="action", required=True, metavar="ACTION")
    install = actions.add_parser("install", help="write, enable (and start) the unit")
    who = install.add_mutually_exclusive_group()
    who.add_argument("--user", help="run as this system user (created if missing; default tentacle)")
    who.add_argument("--as-root", action="store_true", help="run as root (less fenced; see README)")
    install.add_argument("--start", action="store_true", help="start it now")
    install.add_argument("--dry-run", action="store_true", help="print the unit and change nothing")
    actions.add_parser("uninstall", help="stop, disable and remove the unit")


def parse_listen(text: str, public_hostname: str | None) -> ListenConfig:
    """HOST:PORT (IPv6 as [::1]:PORT) into a ListenConfig."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen must be HOST:PORT, not {text!r}")
    try:
        return ListenConfig(
            host=host.strip("[]") or "0.0.0.0", port=int(port), public_hostname=public_hostname
        )
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from exc


def cmd_new_certificate(paths: InstancePaths, args: argparse.Namespace) -> int:
    key_path = config_mod.file(paths, config_mod.KEY_FILE)
    if key_path.exists() and not args.force:
        raise UsageError(f"{key_path} exists; use --force to replace it (then register again)")
    from tentacle.net import pki  # cryptography: `run` never loads it (8 MB resident)

    paths.create()
    key = pki.new_key()
    cert = pki.self_signed(key, config_mod.load(paths).name or "tentacle")
    pki.write_private(key_path, pki.key_pem(key))
    pki.write_private(config_mod.file(paths, config_mod.CERT_FILE), pki.cert_pem(cert), 0o644)
    print(pki.cert_thumbprint(cert))
    return 0


def cmd_show_thumbprint(paths: InstancePaths, args: argparse.Namespace) -> int:
    from tentacle.net import pki

    cert_path = config_mod.file(paths, config_mod.CERT_FILE)
    if not cert_path.exists():
        raise UsageError(f"{cert_path} does not exist; run `tentacle new-certificate` first")
    print(pki.cert_thumbprint(pki.load_cert(cert_path)))
    return 0


def cmd_register(paths: InstancePaths, args: argparse.Namespace) -> int:
    from tentacle.agent import registration
    from tentacle.net import pki

    listen = parse_listen(args.listen, args.public_hostname) if args.listen else None
    reg = registration.Registration(
        server=args.server[0],
        more_servers=tuple(args.server[1:]),
        token=args.token,
        server_thumbprint=args.server_thumbprint,
        name=args.name,
        environments=tuple(args.environment),
        roles=tuple(args.role),
        listen=listen,
        force=args.force,
        space=args.space,
        tenants=tuple(args.tenant),
        tenant_tags=tuple(args.tenant_tag),
        tenanted_deployment=args.tenanted_deployment,
    )
    config = asyncio.run(registration.register(paths, reg))
    cert = pki.load_cert(config_mod.file(paths, config_mod.CERT_FILE))
    where = f"{config.server.url} (space {reg.space})"
    print(f"registered {config.name} ({config.mode}) with {where}", file=sys.stderr)
    print(pki.cert_thumbprint(cert))
    return 0


def cmd_run(paths: InstancePaths, args: argparse.Namespace) -> int:
    config = config_mod.load(paths)
    setup_logging(config.log_level)
    lean_aiohttp()
    from tentacle.agent import daemon  # aiohttp and the runner: only the daemon needs them

    return asyncio.run(daemon.run(paths, config))


def status_report(paths: InstancePaths) -> dict[str, object]:
    """What `tentacle status` shows, as data."""
    from tentacle.net import pki
    from tentacle.protocol import signing

    config = config_mod.load(paths)
    cert_path = config_mod.file(paths, config_mod.CERT_FILE)
    from tentacle.agent.daemon import STATE_FILE

    state_path = paths.state / STATE_FILE
    connection = json.loads(state_path.read_text()) if state_path.exists() else {"state": "not running"}
    return {
        "name": config.name or None,
        "registered": config.registered,
        "mode": config.mode or None,
        "server": config.server.url or None,
        "serverThumbprints": list(config.server.thumbprints),
        "signingKeyId": signing.key_id(pinned) if (pinned := _pinned_key(paths, config)) else None,
        "thumbprint": pki.cert_thumbprint(pki.load_cert(cert_path)) if cert_path.exists() else None,
        "environments": list(config.environments),
        "roles": list(config.roles),
        "connection": connection,
        "home": str(paths.config),
        "cacheBytes": _tree_size(paths.cache),
    }


def _pinned_key(paths: InstancePaths, config: config_mod.TentacleConfig) -> str:
    from tentacle.agent.signatures import PinFile

    return PinFile(paths.state, config.server.signing_key).pinned()


def _signing_line(key_id: object) -> str:
    if key_id is None:
        return "unsigned accepted: no signing key pinned yet (the server hands one over when it connects)"
    return f"signed by key {key_id} only"


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def cmd_status(paths: InstancePaths, args: argparse.Namespace) -> int:
    report = status_report(paths)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    conn = report["connection"]
    assert isinstance(conn, dict)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(conn["since"])) if "since" in conn else ""
    rows = [
        ("name", report["name"] or "(not registered)"),
        ("mode", report["mode"] or "-"),
        ("server", report["server"] or "-"),
        ("trusts", ", ".join(report["serverThumbprints"]) or "-"),  # type: ignore[arg-type]
        ("plans", _signing_line(report["signingKeyId"])),
        ("thumbprint", report["thumbprint"] or "-"),
        ("connection", f"{conn.get('state')} {conn.get('detail', '')} {since}".strip()),
        ("cache", f"{report['cacheBytes']} bytes"),
        ("home", report["home"]),
    ]
    for label, value in rows:
        print(f"{label:<11} {value}")
    return 0 if report["registered"] else 1


def cmd_service(paths: InstancePaths, args: argparse.Namespace) -> int:
    from tentacle.common import units as systemd  # only this command needs it

    home = str(paths.config) if args.home else None
    exe: str | list[str] = shutil.which("tentacle") or [sys.executable, "-m", "tentacle"]
    if args.action == "uninstall":
        systemd.uninstall_service("tentacle", home=home)
        return 0
    text = systemd.install_service(
        "tentacle",
        executable=exe,
        home=home,
        user=None if args.as_root else (args.user or "tentacle"),
        as_root=args.as_root,
        start=args.start,
        dry_run=args.dry_run,
        instance_dirs=[paths.config],
    )
    if args.dry_run:
        print(text, end="")
    return 0


COMMANDS = {
    "new-certificate": cmd_new_certificate,
    "show-thumbprint": cmd_show_thumbprint,
    "register": cmd_register,
    "run": cmd_run,
    "status": cmd_status,
    "service": cmd_service,
}


@contextlib.contextmanager
def _switched_on(name: str) -> Iterator[None]:
    """A library's documented environment switch, set only while it loads: scripts never see it."""
    given = os.environ.get(name)
    os.environ[name] = given if given is not None else "1"
    try:
        yield
    finally:
        if given is None:
            del os.environ[name]


def lean_frozenlist() -> None:
    """Make aiohttp load frozenlist's pure-Python FrozenList rather than its C++ extension.

    aiohttp keeps its signals and middlewares in FrozenLists; the extension links
    libstdc++, which alone keeps about 1.4 MB resident in every tentacle, idle or not
    (the idle benchmark's budget is 40 MB). The pure-Python class has the same interface
    and behaviour, and these lists are read a few times per request. The switch is
    frozenlist's own documented environment variable, set only while it loads, so that
    deployment scripts never see it. Called by `main` before anything imports aiohttp;
    importing a module of this project never does it.
    """
    if "frozenlist" in sys.modules:
        return
    with _switched_on("FROZENLIST_NO_EXTENSIONS"):
        import frozenlist  # noqa: F401  # loaded here, with the switch set


def lean_aiohttp() -> None:
    """Load aiohttp for `tentacle run` without its C extensions and without the system's MIME table.

    Measured on the idle benchmark: aiohttp's compiled HTTP parser, writer and websocket
    reader keep about 0.8 MB resident, and aiohttp.web reads /etc/mime.types into a table
    at import (0.3 MB) for serving files, which a tentacle never does. Together they make
    room for msgspec (the typed wire, about 1.1 MB) in the 40 MB budget. The pure-Python
    parser and reader are aiohttp's own, tested like the compiled ones; what a tentacle
    moves in bulk is not parsed byte by byte (a pull reads a blocking socket, a pushed body
    is handed on in chunks), and the push benchmark shows no difference beyond its noise.
    The switch is aiohttp's documented AIOHTTP_NO_EXTENSIONS, set only while it loads.
    """
    if "aiohttp" in sys.modules:
        return
    mimetypes.knownfiles = []  # before aiohttp.web builds its MimeTypes: Python's own table only
    with _switched_on("AIOHTTP_NO_EXTENSIONS"):
        import aiohttp  # noqa: F401  # loaded here, with the switch set


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tentacle` command."""
    lean_frozenlist()
    args = _parser().parse_args(argv)
    return exit_code_of("tentacle", lambda: COMMANDS[args.command](resolve("tentacle", args.home), args))


if __name__ == "__main__":
    sys.exit(main())
