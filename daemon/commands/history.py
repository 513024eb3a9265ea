"""`stocksync history SKU`: the audit trail of one SKU, read straight from the state.

Read-only on purpose: the daemon may be running on the same state, and opening it as a store
would recover and migrate state under the daemon's feet (and, on PostgreSQL, write beside the
leader outside its lease). So this module reads the `history` table (channel, key, before,
after, outcome, error, at; values in their canonical JSON text) joined with the SKU-to-key
mapping, and nothing else: through a read-only SQLite connection, or one read-only PostgreSQL
transaction on a direct connection (the same tables and columns in both).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, LiteralString, TextIO

import orjson
from psycopg import Error as PsycopgError
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.errors import UndefinedTable

from daemon.config.dsn import describe
from daemon.core.models import Value
from daemon.core.units import parse_duration
from daemon.store.pg.connect import connect
from daemon.store.pg.merchants import DEFAULT_MERCHANT, scope

__all__ = [
    "DEFAULT_LIMIT",
    "HistoryEntry",
    "UnknownChannel",
    "parse_since",
    "read_history",
    "read_history_pg",
    "show_history",
    "show_history_pg",
]

DEFAULT_LIMIT = 20
#: seconds to wait for PostgreSQL to answer the connection, unless the DSN or PGCONNECT_TIMEOUT
#: says otherwise (libpq would wait for as long as the network takes to give up)
CONNECT_TIMEOUT = 10

_COLUMNS = "h.channel, h.key, h.before, h.after, h.outcome, h.error, h.at"
_WHERE = (
    "FROM history h WHERE EXISTS (SELECT 1 FROM shares s "
    "WHERE s.channel = h.channel AND s.key = h.key AND s.sku = ?)"
)
_PG_COLUMNS: LiteralString = "h.channel, h.key, h.before, h.after, h.outcome, h.error, h.at"
_PG_WHERE: LiteralString = (
    "FROM history h WHERE EXISTS (SELECT 1 FROM shares s "
    "WHERE s.channel = h.channel AND s.key = h.key AND s.sku = %s)"
)


class UnknownChannel(LookupError):
    """`--channel NAME` names no channel of the state (a typo reads as "no pushes" otherwise)."""

    def __init__(self, channel: str, known: list[str]) -> None:
        super().__init__(
            f"--channel: no channel {channel!r} in this state (channels: "
            f"{', '.join(sorted(known)) or 'none yet'})"
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One push of one item."""

    channel: str
    key: str
    before: str | None
    after: str
    outcome: str
    error: str | None
    at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds"),
            "channel": self.channel,
            "key": self.key,
            "before": None if self.before is None else _plain(self.before),
            "after": _plain(self.after),
            "outcome": self.outcome,
            "error": self.error,
        }


def parse_since(text: str, now: float) -> float:
    """`--since`: a duration back from now (`"2h"`, `"30m"`) or an ISO 8601 date or time (UTC)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor a date (2026-11-24T08:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def read_history(
    state: Path,
    sku: str,
    *,
    channel: str | None = None,
    since: float | None = None,
    limit: int | None = DEFAULT_LIMIT,
) -> tuple[list[HistoryEntry], int]:
    """The newest pushes first (at most `limit`), and how many matched in all."""
    filters, params = "", [sku]
    if channel is not None:
        filters += " AND h.channel = ?"
        params.append(channel)
    if since is not None:
        filters += " AND h.at >= ?"
        params.append(str(since))
    where = _WHERE + filters
    page = "" if limit is None else f" LIMIT {int(limit)}"
    db = sqlite3.connect(f"{state.resolve().as_uri()}?mode=ro", uri=True)
    try:
        total = int(db.execute(f"SELECT COUNT(*) {where}", params).fetchone()[0])
        rows = db.execute(
            f"SELECT {_COLUMNS} {where} ORDER BY h.at DESC, h.id DESC{page}",
            params,
        ).fetchall()
        if channel is not None and not total:
            known = [row[0] for row in db.execute("SELECT DISTINCT channel FROM shares")]
            if channel not in known:
                raise UnknownChannel(channel, known)
    finally:
        db.close()
    entries = [HistoryEntry(c, k, b, a, o, e, float(at)) for c, k, b, a, o, e, at in rows]
    return entries, total


async def read_history_pg(
    dsn: str,
    sku: str,
    *,
    password: str | None = None,
    channel: str | None = None,
    since: float | None = None,
    limit: int | None = DEFAULT_LIMIT,
    merchant: str = DEFAULT_MERCHANT,
) -> tuple[list[HistoryEntry], int]:
    """As `read_history`, from a PostgreSQL state (the merchant's schema): one read-only
    transaction, one connection."""
    query: LiteralString = _PG_WHERE
    params: list[object] = [sku]
    if channel is not None:
        query += " AND h.channel = %s"
        params.append(channel)
    if since is not None:
        query += " AND h.at >= %s"
        params.append(since)
    page = sql.SQL("") if limit is None else sql.SQL(" LIMIT {}").format(int(limit))
    conn = await connect(_with_timeout(dsn), password=password)
    try:
        await conn.set_read_only(True)
        async with conn.transaction():
            await scope(conn, merchant)
            cursor = await conn.execute("SELECT COUNT(*) " + query, params)
            counted = await cursor.fetchone()
            cursor = await conn.execute(
                sql.SQL("SELECT " + _PG_COLUMNS + " " + query + " ORDER BY h.at DESC, h.id DESC")
                + page,
                params,
            )
            rows = await cursor.fetchall()
            if channel is not None and not (counted and counted[0]):
                cursor = await conn.execute("SELECT DISTINCT channel FROM shares")
                known = [str(row[0]) for row in await cursor.fetchall()]
                if channel not in known:
                    raise UnknownChannel(channel, known)
    finally:
        await conn.close()
    total = 0 if counted is None else int(counted[0])
    entries = [HistoryEntry(c, k, b, a, o, e, float(at)) for c, k, b, a, o, e, at in rows]
    return entries, total


def _with_timeout(dsn: str) -> str:
    if "connect_timeout" in conninfo_to_dict(dsn) or os.environ.get("PGCONNECT_TIMEOUT"):
        return dsn
    return make_conninfo(dsn, connect_timeout=CONNECT_TIMEOUT)


def _plain(text: str) -> dict[str, Any]:
    """A stored value as JSON for people and scripts: `{"quantity": 3, "price": "9.5"}`."""
    value = Value.decode(text)
    plain: dict[str, Any] = {}
    if value.quantity is not None:
        plain["quantity"] = value.quantity
    if value.price is not None:
        plain["price"] = format(value.price.normalize(), "f")
    if value.live is not None:
        plain["live"] = value.live
    return plain


def _describe(text: str | None) -> str:
    if text is None:
        return "-"
    names = {"quantity": "qty", "price": "price", "live": "live"}
    parts = [
        f"{names[k]}={str(v).lower() if isinstance(v, bool) else v}"
        for k, v in _plain(text).items()
    ]
    return " ".join(parts) or "-"


def show_history(
    state: Path,
    sku: str,
    *,
    channel: str | None,
    since: float | None,
    limit: int | None,
    as_json: bool,
    out: TextIO = sys.stdout,
) -> int:
    """Print the trail; 0 (also when empty), 1 when the state file cannot be read."""
    if not state.exists():
        print(f"no state file at {state} (is daemon.state or --state right?)", file=sys.stderr)
        return 1
    try:
        entries, total = read_history(state, sku, channel=channel, since=since, limit=limit)
    except sqlite3.Error as exc:
        print(f"cannot read the state file {state}: {exc}", file=sys.stderr)
        return 1
    except UnknownChannel as exc:
        print(exc, file=sys.stderr)
        return 2
    return _print(entries, total, sku, as_json=as_json, out=out)


async def show_history_pg(
    dsn: str,
    sku: str,
    *,
    password: str | None,
    channel: str | None,
    since: float | None,
    limit: int | None,
    as_json: bool,
    out: TextIO = sys.stdout,
    merchant: str = DEFAULT_MERCHANT,
) -> int:
    """As `show_history`, from a PostgreSQL state; a failure is one line naming the database
    (`user@host:port/db`: never the password, which travels beside the DSN, not in it)."""
    where = describe(dsn)
    try:
        entries, total = await read_history_pg(
            dsn,
            sku,
            password=password,
            channel=channel,
            since=since,
            limit=limit,
            merchant=merchant,
        )
    except UndefinedTable:
        print(f"{where} holds no stocksync state of merchant {merchant} (is daemon.state, "
              "--state or --merchant right?)", file=sys.stderr)  # fmt: skip
        return 1
    except PsycopgError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # libpq's lines, as one
        print(f"cannot read the state in {where}: {reason}", file=sys.stderr)
        return 1
    except UnknownChannel as exc:
        print(exc, file=sys.stderr)
        return 2
    return _print(entries, total, sku, as_json=as_json, out=out)


def _print(entries: list[HistoryEntry], total: int, sku: str, *, as_json: bool, out: TextIO) -> int:
    if as_json:
        out.write(orjson.dumps([e.as_json() for e in entries], option=orjson.OPT_INDENT_2).decode())
        out.write("\n")
        return 0
    if not entries:
        print(f"no pushes recorded for {sku}", file=out)
        return 0
    width = max(len(e.channel) for e in entries)
    for entry in entries:
        when = datetime.fromtimestamp(entry.at, UTC).isoformat(timespec="seconds")
        change = f"{_describe(entry.before)} -> {_describe(entry.after)}"
        error = f"  {entry.error}" if entry.error else ""
        print(
            f"{when}  {entry.channel:<{width}}  {entry.key}  {change}  {entry.outcome}{error}",
            file=out,
        )
    if total > len(entries):
        print(f"# {len(entries)} newest of {total} pushes; --limit 0 shows all", file=out)
    return 0
