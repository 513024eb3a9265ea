"""The `stocksync` command. The composition root: the only module that imports the registry."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import anyio
import orjson
from psycopg import Error as PsycopgError

from adapters import ADAPTERS
from daemon import __version__
from daemon.config import Config, load_config, secret_values
from daemon.demo import run_demo
from daemon.drift import DEFAULT_SHARE, run_drift
from daemon.errors import ConfigError, StateUnusable
from daemon.logs import configure_logging
from daemon.oneshot import dry_run, run_once
from daemon.pg.dsn import check_dsn, describe
from daemon.pipeline import Daemon
from daemon.sdnotify import notifier, watchdog_interval
from daemon.store import PostgresStore, SQLiteStore, Store, TargetNotEmpty, copy_state

__all__ = ["main"]

EXIT_CONFIG = 2


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
    with_config("check-config", "validate the file and the secrets it names; exit 0 or 2")
    with_config("resync", "ask the running daemon for a full resync (same as SIGUSR1)")
    with_config("status", "print the running daemon's status")
    history = with_config("history", "the audit trail of one SKU: every push per channel")
    history.add_argument("sku")
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
        help="copy a SQLite state into PostgreSQL",
        description="Copy a SQLite state file into an empty PostgreSQL database (the password "
        "from PGPASSWORD or PGPASSFILE, never in the DSN).",
    )
    migrate_state.add_argument("--from", dest="source", type=Path, required=True, metavar="FILE")
    migrate_state.add_argument("--to", dest="dsn", required=True, metavar="DSN")
    demo = commands.add_parser(
        "demo", help="simulated keyCRM and channels on loopback, and the daemon"
    )
    demo.add_argument(
        "--port", type=int, default=9108, help="the daemon's HTTP port (default 9108)"
    )
    demo.add_argument("--skus", type=int, default=60, help="how many SKUs the fake keyCRM holds")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


def _load(args: argparse.Namespace) -> Config:
    if args.config is None:
        raise ConfigError([("config", "no file given: use -c FILE or set STOCKSYNC_CONFIG")])
    return load_config(Path(args.config), ADAPTERS)


def _print_faults(exc: ConfigError) -> None:
    for key, problem in exc.faults:
        print(f"{key}: {problem}", file=sys.stderr)


def _base_url(config: Config) -> str:
    host, _, port = config.daemon.listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):  # noqa: S104 -- reaching a wildcard listener locally
        host = "127.0.0.1"
    return f"http://{host}:{port}"


async def _resync(config: Config) -> int:
    token = config.daemon.admin_token
    if token is None:
        print(
            "daemon.admin_token_env (or _file) is not set, so the daemon has no admin route; "
            "send SIGUSR1 instead (systemctl kill -s USR1 stocksync)",
            file=sys.stderr,
        )
        return 1
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{_base_url(config)}/admin/resync",
                headers=headers,
                timeout=aiohttp.ClientTimeout(10),
            ) as response,
        ):
            if response.status != 202:
                print(f"the daemon answered HTTP {response.status}", file=sys.stderr)
                return 1
    except aiohttp.ClientError as exc:
        print(f"cannot reach the daemon at {_base_url(config)}: {exc}", file=sys.stderr)
        return 1
    print("resync started")
    return 0


async def _status(config: Config) -> int:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{_base_url(config)}/status", timeout=aiohttp.ClientTimeout(10)
            ) as response,
        ):
            data = orjson.loads(await response.read())
    except aiohttp.ClientError as exc:
        print(f"cannot reach the daemon at {_base_url(config)}: {exc}", file=sys.stderr)
        return 1
    source = data.get("source", {})
    print(
        f"stocksync {data.get('version')}  ready: {data.get('ready')}  {data.get('reason') or ''}"
    )
    budget = f"{source.get('budget_used_last_minute')}/{source.get('budget_requests_per_minute')}"
    print(
        f"keyCRM  last scan: {source.get('last_scan_success')}"
        f"  scanning: {source.get('scan_running')}"
        f" (page {source.get('scan_page')}/{source.get('scan_last_page')})"
        f"  budget: {budget} per min  last error: {source.get('last_error') or '-'}"
    )
    print(f"{'channel':<20} {'pending':>8} {'rejected':>8} {'lag (s)':>9}  state    last error")
    for name, ch in data.get("channels", {}).items():
        state = "down" if not ch.get("up") else ("paused" if ch.get("paused") else "up")
        print(
            f"{name:<20} {ch.get('pending'):>8} {ch.get('rejected'):>8} "
            f"{ch.get('lag_seconds'):>9}  {state:<8} {ch.get('last_error') or '-'}"
        )
    return 0


async def _history(config: Config, sku: str) -> int:
    store: Store
    if config.daemon.database is not None:
        # Reading the history needs no lease: any replica, or an operator's shell, may.
        # An unreachable database is StateUnusable: one line, exit 2 (see main).
        password = config.daemon.database_password
        store = await PostgresStore.open(
            config.daemon.database,
            password=None if password is None else password.get_secret_value(),
            max_size=1,
        )
    elif not config.daemon.state.exists():
        print(f"no state file at {config.daemon.state}", file=sys.stderr)
        return 1
    else:
        store = SQLiteStore(config.daemon.state)
    try:
        rows = await store.history(sku)
    finally:
        await store.close()
    if not rows:
        print(f"no pushes recorded for {sku}")
        return 0
    for row in rows:
        when = datetime.fromtimestamp(row.at, UTC).isoformat(timespec="seconds")
        before = "-" if row.before is None else row.before.describe()
        error = f"  {row.error}" if row.error else ""
        change = f"{before} -> {row.after.describe()}"
        print(f"{when}  {row.channel:<16} {row.key}  {change}  {row.outcome}{error}")
    return 0


async def _migrate_state(source: Path, dsn: str) -> int:
    try:
        check_dsn(dsn)
    except ValueError as exc:
        print(f"--to: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        copied = await copy_state(source, dsn)
    except (OSError, TargetNotEmpty, PsycopgError) as exc:
        # psycopg's messages name the server, never the password (it is not in the DSN).
        print(f"migrate-state: {exc}", file=sys.stderr)
        return 1
    print(
        f"copied {source} into {describe(dsn)}: " + ", ".join(f"{n} {t}" for t, n in copied.items())
    )
    return 0


async def _run(config: Config, args: argparse.Namespace) -> int:
    daemon = Daemon(
        config, reload=lambda: _load(args), notify=notifier(), watchdog=watchdog_interval()
    )
    await daemon.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except StateUnusable as exc:
        # Damaged, foreign or locked state: an operator's problem, said in one line.
        print(f"stocksync: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "migrate-state":
        return anyio.run(_migrate_state, args.source, args.dsn)
    if args.command == "demo":
        try:
            return anyio.run(
                lambda: run_demo(
                    dict(ADAPTERS), port=args.port, skus=args.skus, duration=args.duration
                )
            )
        except KeyboardInterrupt:
            return 0
    try:
        config = _load(args)
    except ConfigError as exc:
        _print_faults(exc)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: ok ({len(config.channels)} channels)")
        return 0
    if config.daemon.database is not None and args.command in ("run", "once", "drift"):
        # The store, the lease, the shared budget and the look-up queue are in; the daemon's
        # leader/standby roles are not wired yet, and without them replicas would not be fenced.
        print(
            "daemon.state: running on PostgreSQL is not wired into the daemon yet "
            "(stocksync migrate-state already copies a state into it)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    configure_logging(
        fmt=config.daemon.log_format, level=config.daemon.log_level, secrets=secret_values(config)
    )
    if args.command == "run":
        return anyio.run(_run, config, args)
    if args.command == "once":
        if args.dry_run:
            return anyio.run(dry_run, config)
        return anyio.run(lambda: run_once(config, wait=args.timeout))
    if args.command == "resync":
        return anyio.run(_resync, config)
    if args.command == "status":
        return anyio.run(_status, config)
    if args.command == "history":
        return anyio.run(_history, config, args.sku)
    if args.command == "drift":
        return anyio.run(
            lambda: run_drift(config, channel=args.channel, as_json=args.json, share=args.share)
        )
    raise AssertionError(args.command)  # pragma: no cover
