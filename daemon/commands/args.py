"""The `stocksync` command line: every subcommand and its flags (cli.py runs them).

`--merchant NAME` picks one merchant of a deployment whose `[daemon] merchants` names a folder
(`acme.toml` is merchant `acme`); a single-merchant file is merchant `default`. `status` and
`resync` default to every merchant; `once`, `drift` and `history` need one when the file names a
folder; `check-config` checks every merchant file unless given one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from daemon import __version__
from daemon.commands.drift import DEFAULT_SHARE, PROGRESS_EVERY
from daemon.commands.history import DEFAULT_LIMIT
from daemon.commands.once_report import LINE_EVERY
from daemon.config.settings import DEFAULT_MERCHANT, MERCHANT_ID

__all__ = ["merchant_id", "parser"]


def merchant_id(text: str) -> str:
    """`text` if it can name a merchant (an argparse `type`: a typo fails before any work)."""
    if MERCHANT_ID.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(
            f"invalid merchant id {text!r}: the stem of its file in daemon.merchants "
            "(lower-case letters, digits, '-' and '_')"
        )
    return text


def _with_merchant(sub: argparse.ArgumentParser, help_text: str) -> None:
    sub.add_argument("--merchant", type=merchant_id, metavar="NAME", help=help_text)


_ONE = (
    "the merchant (its file's stem in daemon.merchants); required when the config names a "
    "merchants folder, else only 'default'"
)
_ALL = "only this merchant (default: every merchant the daemon serves)"


def parser() -> argparse.ArgumentParser:
    """Every subcommand and its flags."""
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
    _with_merchant(once, _ONE)
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
    _with_merchant(check, "only this merchant's file (and the main file); default: every one")
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
    drift.add_argument(
        "--progress-every",
        type=float,
        default=PROGRESS_EVERY,
        metavar="SECONDS",
        help=f"a progress line on stderr this often while reading (default {PROGRESS_EVERY:g})",
    )
    _with_merchant(drift, _ONE)
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
    _with_merchant(resync, _ALL)
    status = with_config("status", "print the running daemon's status")
    status.add_argument("--url", help=url_help)
    status.add_argument("--json", action="store_true", help="the daemon's JSON, with states")
    status.add_argument("--watch", action="store_true", help="a live view, redrawn in place")
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between --watch refreshes"
    )
    _with_merchant(status, _ALL)
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
    _with_merchant(history, "whose state to read: " + _ONE)


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
    _with_merchant(
        release, "whose guard to release (required when the daemon serves several merchants)"
    )
