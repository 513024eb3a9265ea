"""The `stocksync` command. The composition root: the only module that imports the registry."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import structlog

from adapters import ADAPTERS
from daemon.commands.args import parser
from daemon.commands.check import check_config
from daemon.commands.demo import run_demo
from daemon.commands.drift import run_drift
from daemon.commands.history import parse_since, show_history, show_history_pg
from daemon.commands.merchants import deployment_secrets, pick
from daemon.commands.migrate import migrate_state
from daemon.commands.once import dry_run, run_once
from daemon.commands.remote import release_guard, request_resync, show_status, watch_status
from daemon.config.deployment import Deployment, load_deployment
from daemon.config.dsn import SCHEMES, check_dsn
from daemon.config.ops import (
    OpsSettings,
    admin_token,
    daemon_url,
    database_password,
    merchant_state,
    read_ops_settings,
)
from daemon.config.settings import DEFAULT_MERCHANT
from daemon.core import redact
from daemon.core.errors import ConfigError, StateUnusable, StocksyncError
from daemon.core.secrets import secrets_named_in
from daemon.shell.daemon import Daemon
from daemon.shell.limits import raise_open_files
from daemon.shell.logs import configure_logging
from daemon.shell.preflight import preflight
from daemon.shell.sdnotify import notifier, watchdog_interval

__all__ = ["main"]

log = structlog.get_logger("stocksync.pipeline")

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


def _scrub_named(args: argparse.Namespace) -> None:
    """Scrub what a read-only command prints of any secret the files name that this shell can
    read: the main file's and, with a merchants folder, every merchant file's."""
    if args.config is None:
        return
    path = Path(args.config)
    redact.update(secrets_named_in(path))
    try:
        folder = read_ops_settings(path).merchants
    except ConfigError:
        return  # the command itself says what is wrong with the file
    if folder is not None and folder.is_dir():
        for file in sorted(folder.glob("*.toml")):
            redact.update(secrets_named_in(file))


def _ops(args: argparse.Namespace) -> int:
    """Run a read-only command; ConfigError goes up to main (exit 2)."""
    _scrub_named(args)
    merchant: str | None = args.merchant
    if args.command == "status":
        url = _daemon_url(args)
        if args.watch:
            every = max(0.2, args.interval)
            return anyio.run(
                lambda: watch_status(url, every=every, merchant=merchant, out=sys.stdout)
            )
        return anyio.run(
            lambda: show_status(url, as_json=args.json, merchant=merchant, out=sys.stdout)
        )
    if args.command == "resync":
        url = _daemon_url(args)
        token = admin_token(_ops_settings(args) if args.config else None, args.token_env)
        return anyio.run(lambda: request_resync(url, token, merchant=merchant))
    if args.command == "guard":
        url = _daemon_url(args)
        token = admin_token(_ops_settings(args) if args.config else None, args.token_env)
        return anyio.run(
            lambda: release_guard(url, token, args.channel, merchant=merchant, out=sys.stdout)
        )
    return _history(args)


def _history(args: argparse.Namespace) -> int:
    """`history SKU`: from `--state`, or the state of the merchant `-c` names (`--merchant`)."""
    settings = _ops_settings(args) if args.state is None else None
    if args.state is None and settings is None:
        raise ConfigError(
            [("config", "no file given: use -c FILE, --state FILE or STOCKSYNC_CONFIG")]
        )
    merchant = args.merchant or DEFAULT_MERCHANT
    state = None if args.state is None else Path(args.state)
    if settings is not None:  # which merchant, and its file on SQLite; refused if unknown
        merchant, state = merchant_state(settings, args.merchant)
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
                merchant=merchant,
            )
        )
    assert state is not None
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


def _load(args: argparse.Namespace, *, check_machine: bool = False) -> Deployment:
    """Load the main file and every merchant file it names, and register every secret with the
    scrubber (at start and on every reload)."""
    if args.config is None:
        raise ConfigError([("config", "no file given: use -c FILE or set STOCKSYNC_CONFIG")])
    deployment = load_deployment(
        Path(args.config), ADAPTERS, check_machine=preflight if check_machine else None
    )
    redact.update(deployment_secrets(deployment))
    return deployment


def _print_faults(exc: ConfigError) -> None:
    for key, problem in exc.faults:
        print(f"{key}: {problem}", file=sys.stderr)


async def _run(deployment: Deployment, args: argparse.Namespace) -> int:
    raise_open_files()  # many merchants hold many files and connections
    for name, faults in deployment.broken.items():
        log.error(
            "merchant.config_invalid",
            merchant=name,
            faults=[f"{k}: {p}" for k, p in faults],
            hint="not started; fix its file, then reload (SIGHUP)",
        )
    daemon = Daemon(
        deployment, reload=lambda: _load(args), notify=notifier(), watchdog=watchdog_interval()
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
    # `run` and `check-config` share one preflight: they refuse the same things, alike.
    deployment = _load(args, check_machine=args.command in ("check-config", "run"))
    if args.command == "check-config":
        return check_config(deployment, merchant=args.merchant, connect_too=args.connect)
    if deployment.daemon.database is not None and args.command in ("once", "drift"):
        print(_ONE_OFF_ON_POSTGRES[args.command], file=sys.stderr)
        return EXIT_CONFIG
    daemon = deployment.daemon
    secrets = deployment_secrets(deployment)
    configure_logging(fmt=daemon.log_format, level=daemon.log_level, secrets=secrets)
    if args.command == "run":
        return anyio.run(_run, deployment, args)
    config = pick(deployment, args.merchant)  # once, drift: one merchant's config and state
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
                config,
                channel=args.channel,
                as_json=args.json,
                share=args.share,
                out=sys.stdout,
                progress_every=args.progress_every,
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
    args = parser().parse_args(argv)
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
