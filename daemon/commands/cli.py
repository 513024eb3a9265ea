"""The `stocksync` command. The composition root: the only module that imports the registry."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from adapters import ADAPTERS
from daemon import __version__
from daemon.commands.connect import connect
from daemon.commands.demo import run_demo
from daemon.commands.drift import DEFAULT_SHARE, run_drift
from daemon.commands.history import DEFAULT_LIMIT, parse_since, show_history, show_history_pg
from daemon.commands.migrate import migrate_state
from daemon.commands.once import dry_run, run_once
from daemon.commands.once_report import LINE_EVERY
from daemon.commands.remote import release_guard, request_resync, show_status, watch_status
from daemon.config.dsn import SCHEMES, check_dsn
from daemon.config.ops import (
    OpsSettings,
    admin_token,
    daemon_url,
    database_password,
    read_ops_settings,
)
from daemon.config.settings import Config, load_config, secret_values
from daemon.core import redact
from daemon.core.errors import ConfigError, StateUnusable, StocksyncError
from daemon.core.secrets import secrets_named_in
from daemon.shell.daemon import Daemon
from daemon.shell.logs import configure_logging
from daemon.shell.preflight import preflight
from daemon.shell.sdnotify import notifier, watchdog_interval
from daemon.store.pg.merchants import DEFAULT_MERCHANT, merchant_id

__all__ = ["main"]

EXIT_CONFIG = 2
#: `run` leads or stands by under the lease; a one-off process beside the replicas would push
#: (once) outside the lease, beside a live leader, or read channels against acknowledgements the
#: leader is moving (drift). So on PostgreSQL they refuse, before touching the database.
_ONE_OFF_ON_POSTGRES = {
    "once": "daemon.state: `once` works on a SQLite state only; on PostgreSQL it would push "
    "beside the leader, outside its lease: ask the running replicas for a full resync instead "
    "(stocksync resync) and watch it with stocksync status",
    "drift": "daemon.state: `drift` works on a SQLite state only; on PostgreSQL the leader "
    "reads the channels back itself (sync.verify_interval): watch stocksync_drift_items_total, "
    "and stocksync history SKU shows each drift",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stocksync", description="Keeps sales channels' stock in sync with keyCRM."
    )
    parser.add_argument("--version", action="version", version=f"stocksync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c",
            "--config",
            type=Path,
            default=os.environ.get("STOCKSYNC_CONFIG"),
            help="the TOML file (default: $STOCKSYNC_CONFIG)",
        )
        return sub

    with_config("run", "run the daemon in the foreground; logs go to stderr")
    once = with_config("once", "one full scan, push the differences, wait, exit 0 or 1")
    once.add_argument(
        "--dry-run", action="store_true", help="print the planned pushes; send nothing"
    )
    once.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for pushes")
    once.add_argument(
        "--progress-every",
        type=float,
        default=LINE_EVERY,
        metavar="SECONDS",
        help=f"progress line interval when stderr is not a terminal (default {LINE_EVERY:g})",
    )
    check = with_config(
        "check-config",
        "validate the file, the secrets it names, the state path and the listener; exit 0 or 2",
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also try keyCRM and every channel once with their credentials (changes nothing); "
        "exit 1 if any fails",
    )
    _ops_commands(with_config)
    _guard_commands(commands)
    drift = with_config(
        "drift", "read back what readable channels hold; report drift; change nothing"
    )
    drift.add_argument("--channel", metavar="NAME", help="only this channel")
    drift.add_argument("--json", action="store_true", help="one JSON document instead of text")
    drift.add_argument(
        "--share",
        type=float,
        default=DEFAULT_SHARE,
        help="share of each channel's rate_limit the reads may use "
        f"(default {DEFAULT_SHARE}; a running daemon keeps the rest)",
    )
    migrate_state = commands.add_parser(
        "migrate-state",
        help="copy one merchant's state between SQLite and PostgreSQL",
        description="Copy a SQLite state file into a merchant's empty PostgreSQL schema, or back "
        "into a new file (the password from PGPASSWORD or PGPASSFILE, never in the DSN).",
    )
    migrate_state.add_argument("--from", dest="source", required=True, metavar="FILE|DSN")
    migrate_state.add_argument("--to", dest="target", required=True, metavar="DSN|FILE")
    migrate_state.add_argument(
        "--merchant", type=merchant_id, default=DEFAULT_MERCHANT, metavar="NAME",
        help=f"whose state FILE is: into its schema alone (default {DEFAULT_MERCHANT})",
    )  # fmt: skip
    demo = commands.add_parser(
        "demo", help="simulated keyCRM and channels on loopback, and the daemon"
    )
    demo.add_argument(
        "--port", type=int, default=9108, help="the daemon's HTTP port (default 9108)"
    )
    demo.add_argument("--skus", type=int, default=60, help="how many SKUs the fake keyCRM holds")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keep the demo's config, state and env file here (default: a temporary folder)",
    )
    return parser


def _ops_commands(with_config: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """status, resync, history: read-only, so they need the daemon's address or state, no secret."""
    url_help = "the daemon's listener, e.g. http://127.0.0.1:9108 (default: daemon.listen of -c)"
    resync = with_config("resync", "ask the running daemon for a full resync (same as SIGUSR1)")
    resync.add_argument("--url", help=url_help)
    resync.add_argument(
        "--token-env",
        metavar="VARIABLE",
        help="the environment variable holding the admin token (default: the config's)",
    )
    status = with_config("status", "print the running daemon's status")
    status.add_argument("--url", help=url_help)
    status.add_argument("--json", action="store_true", help="the daemon's JSON, with states")
    status.add_argument("--watch", action="store_true", help="a live view, redrawn in place")
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between --watch refreshes"
    )
    history = with_config("history", "the audit trail of one SKU: every push per channel")
    history.add_argument("sku")
    history.add_argument(
        "--state",
        help="the state file or PostgreSQL DSN (default: daemon.state of -c)",
    )
    history.add_argument("--channel", help="only this channel")
    history.add_argument(
        "--since", help="only pushes after this: a duration back (30m, 2h, 7d) or a UTC date/time"
    )
    history.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"newest pushes shown (default {DEFAULT_LIMIT}; 0 for all)",
    )
    history.add_argument("--json", action="store_true", help="one JSON array")


def _guard_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`guard release`: like resync, a client of the running daemon's admin route."""
    guard = commands.add_parser(
        "guard", help="the mass-change guard", description="the mass-change guard"
    )
    actions = guard.add_subparsers(dest="guard_command", required=True)
    text = (
        "show the zeros the mass-change guard holds, then release them (they are pushed now, "
        "and each release is recorded in the history)"
    )
    release = actions.add_parser("release", help=text, description=text)
    release.add_argument(
        "-c",
        "--config",
        type=Path,
        default=os.environ.get("STOCKSYNC_CONFIG"),
        help="the TOML file (default: $STOCKSYNC_CONFIG)",
    )
    release.add_argument("--channel", metavar="NAME", help="only this channel's hold")
    release.add_argument(
        "--url",
        help="the daemon's listener, e.g. http://127.0.0.1:9108 (default: daemon.listen of -c)",
    )
    release.add_argument(
        "--token-env",
        metavar="VARIABLE",
        help="the environment variable holding the admin token (default: the config's)",
    )


def _ops_settings(args: argparse.Namespace) -> OpsSettings | None:
    """`[daemon]` of -c (secrets untouched), or None when the flags say everything."""
    if args.config is None:
        return None
    return read_ops_settings(Path(args.config))


def _daemon_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    settings = _ops_settings(args)
    if settings is None:
        raise ConfigError([("config", "no file given: use -c FILE, --url URL or STOCKSYNC_CONFIG")])
    return daemon_url(settings.listen)


def _ops(args: argparse.Namespace) -> int:
    """Run a read-only command; ConfigError goes up to main (exit 2)."""
    if args.config is not None:  # scrub what it prints of any secret this shell can read
        redact.update(secrets_named_in(Path(args.config)))
    if args.command == "status":
        url = _daemon_url(args)
        if args.watch:
            return anyio.run(
                lambda: watch_status(url, every=max(0.2, args.interval), out=sys.stdout)
            )
        return anyio.run(lambda: show_status(url, as_json=args.json, out=sys.stdout))
    if args.command == "resync":
        url = _daemon_url(args)
        token = admin_token(_ops_settings(args) if args.config else None, args.token_env)
        return anyio.run(request_resync, url, token)
    if args.command == "guard":
        url = _daemon_url(args)
        token = admin_token(_ops_settings(args) if args.config else None, args.token_env)
        return anyio.run(lambda: release_guard(url, token, args.channel, out=sys.stdout))
    settings = _ops_settings(args) if args.state is None else None
    if args.state is None and settings is None:
        raise ConfigError(
            [("config", "no file given: use -c FILE, --state FILE or STOCKSYNC_CONFIG")]
        )
    try:
        since = None if args.since is None else parse_since(args.since, time.time())
    except ValueError as exc:
        raise ConfigError([("--since", str(exc))]) from exc
    limit = None if args.limit <= 0 else args.limit
    dsn = _history_dsn(args, settings)
    if dsn is not None:
        # The password as the daemon gets it: the config's state_password_env/_file (with -c),
        # else libpq's PGPASSWORD/PGPASSFILE. Never in the DSN, so never in what we print.
        password = database_password(settings or (_ops_settings(args) if args.config else None))
        secret = None if password is None else password.get_secret_value()
        redact.update([s for s in (secret, os.environ.get("PGPASSWORD")) if s])
        return anyio.run(
            lambda: show_history_pg(
                dsn,
                args.sku,
                password=secret,
                channel=args.channel,
                since=since,
                limit=limit,
                as_json=args.json,
                out=sys.stdout,
            )
        )
    state = Path(args.state) if args.state is not None else settings.state  # type: ignore[union-attr]
    return show_history(
        state,
        args.sku,
        channel=args.channel,
        since=since,
        limit=limit,
        as_json=args.json,
        out=sys.stdout,
    )


def _history_dsn(args: argparse.Namespace, settings: OpsSettings | None) -> str | None:
    """The PostgreSQL DSN `history` reads: `--state DSN` or a DSN `daemon.state`; else None."""
    if args.state is None:
        return None if settings is None else settings.database
    if not str(args.state).startswith(SCHEMES):
        return None
    try:
        return check_dsn(args.state)
    except ValueError as exc:
        raise ConfigError([("--state", str(exc))]) from exc


def _load(args: argparse.Namespace, *, check_machine: bool = False) -> Config:
    """Load the file and register its secrets with the scrubber (at start and on every reload)."""
    if args.config is None:
        raise ConfigError([("config", "no file given: use -c FILE or set STOCKSYNC_CONFIG")])
    config = load_config(
        Path(args.config), ADAPTERS, check_machine=preflight if check_machine else None
    )
    redact.update(secret_values(config))
    return config


def _print_faults(exc: ConfigError) -> None:
    for key, problem in exc.faults:
        print(f"{key}: {problem}", file=sys.stderr)


def _check_config(config: Config, *, connect_too: bool) -> int:
    """The file was loaded with the machine checks; now, if asked, try every endpoint."""
    print(f"{config.path}: ok ({len(config.channels)} channels)")
    if not connect_too:
        return 0
    reaches = anyio.run(connect, config)
    for reach in reaches:
        print(reach.line(), file=sys.stdout if reach.ok else sys.stderr)
    return 0 if all(reach.ok for reach in reaches) else 1


async def _run(config: Config, args: argparse.Namespace) -> int:
    daemon = Daemon(
        config, reload=lambda: _load(args), notify=notifier(), watchdog=watchdog_interval()
    )
    await daemon.run()
    return 0


def _command(args: argparse.Namespace) -> int:
    # Output goes to `sys.stdout` as it is now (main's scrubbing stream), never a default
    # argument bound at import time.
    if args.command == "migrate-state":
        return anyio.run(migrate_state, args.source, args.target, args.merchant)
    if args.command == "demo":
        return anyio.run(
            lambda: run_demo(
                dict(ADAPTERS),
                port=args.port,
                skus=args.skus,
                duration=args.duration,
                state_dir=args.state_dir,
                out=sys.stdout,
            )
        )
    if args.command in ("status", "resync", "history", "guard"):
        return _ops(args)
    config = _load(args, check_machine=args.command == "check-config")
    if args.command == "check-config":
        return _check_config(config, connect_too=args.connect)
    if config.daemon.database is not None and args.command in ("once", "drift"):
        print(_ONE_OFF_ON_POSTGRES[args.command], file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(
        fmt=config.daemon.log_format, level=config.daemon.log_level, secrets=secret_values(config)
    )
    if args.command == "run":
        return anyio.run(_run, config, args)
    if args.command == "once":
        if args.dry_run:
            return anyio.run(dry_run, config, sys.stdout)
        return anyio.run(
            lambda: run_once(
                config, wait=args.timeout, progress_every=args.progress_every, out=sys.stdout
            )
        )
    if args.command == "drift":
        return anyio.run(
            lambda: run_drift(
                config, channel=args.channel, as_json=args.json, share=args.share, out=sys.stdout
            )
        )
    raise AssertionError(args.command)  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; ordinary failures are one line on stderr and an exit code, no traceback.

    Exit codes: 0 done, 1 failed (daemon unreachable, a push not acknowledged, cannot start),
    2 the config or the command line is wrong, 130 interrupted, 141 the reader of our output went
    away (`stocksync history SKU | head`), as a shell reports a process killed by SIGPIPE.
    Everything it prints passes through the secret scrubber (`daemon.core.redact`).
    """
    out, err = sys.stdout, sys.stderr
    sys.stdout = redact.ScrubbingStream(out)
    sys.stderr = redact.ScrubbingStream(err)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except KeyboardInterrupt:
        return 0 if args.command in ("demo", "status") else 130
    except BrokenPipeError:
        return _broken_pipe()
    except BaseExceptionGroup as group:
        expected = expected_failure(group)
        if expected is None:
            raise
        return _report(expected)
    except (StocksyncError, sqlite3.Error, OSError) as exc:
        if not _ordinary(exc):
            raise
        return _report(exc)


def _ordinary(exc: BaseException) -> bool:
    """A failure the operator fixes outside stocksync (a file, the port, a config), not a bug.

    An OSError naming a file (missing folder, permission denied, a directory where a file
    should be) is one; any other OSError is unexpected and keeps its traceback.
    """
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        return exc.filename is not None
    return isinstance(exc, StocksyncError | sqlite3.Error | BrokenPipeError | KeyboardInterrupt)


def expected_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one ordinary failure a task group wraps (anyio wraps even a single error), if any."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    ordinary = [e for e in leaves if _ordinary(e)]
    others = [e for e in leaves if not _ordinary(e) and not isinstance(e, asyncio.CancelledError)]
    return ordinary[0] if ordinary and not others else None


def _report(exc: BaseException) -> int:
    if isinstance(exc, BrokenPipeError):
        return _broken_pipe()
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, ConfigError):
        _print_faults(exc)
        return EXIT_CONFIG
    if isinstance(exc, StateUnusable):
        # Damaged, foreign or locked state: fix it outside stocksync, as with a bad config.
        print(f"stocksync: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if isinstance(exc, sqlite3.Error):
        print(f"state file: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, OSError):
        reason = (exc.strerror or str(exc)).lower()
        print(f"cannot use {exc.filename}: {reason}", file=sys.stderr)
        return 1
    print(exc, file=sys.stderr)
    return 1


def _broken_pipe() -> int:
    # Python would complain again when it flushes stdout at exit: point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141
