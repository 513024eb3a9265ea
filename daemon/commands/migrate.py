"""`stocksync migrate-state`: one merchant's state from a SQLite file into PostgreSQL
(`daemon.store.migrate_state`), or from PostgreSQL into a new file (`daemon.store.export_state`);
exit 0, 1 if it could not, 2 for a DSN holding a password."""

from __future__ import annotations

import sys
from pathlib import Path

from psycopg import Error as PsycopgError

from daemon.config.dsn import SCHEMES, check_dsn, describe
from daemon.store import TargetNotEmpty, copy_state, export_state
from daemon.store.pg.merchants import DEFAULT_MERCHANT

__all__ = ["migrate_state"]


def _is_database(text: str) -> bool:
    """A DSN (a URL or key=value), not a file."""
    return (text.startswith(SCHEMES) or "=" in text) and not Path(text).is_file()


async def migrate_state(source: str, target: str, merchant: str = DEFAULT_MERCHANT) -> int:
    back = _is_database(source)  # PostgreSQL into a new file; else a file into PostgreSQL
    try:
        dsn = check_dsn(source if back else target)
    except ValueError as exc:
        print(f"{'--from' if back else '--to'}: {exc}", file=sys.stderr)
        return 2  # a config fault, as the CLI exits for one
    try:
        if back:
            copied = await export_state(dsn, Path(target), merchant=merchant)
        else:
            copied = await copy_state(Path(source), dsn, merchant=merchant)
    except (OSError, TargetNotEmpty, PsycopgError) as exc:
        # psycopg's messages name the server, never the password (it is not in the DSN).
        print(f"migrate-state: {exc}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{count} {table}" for table, count in copied.items())
    where = (describe(dsn), target) if back else (source, describe(dsn))
    print(f"copied {where[0]} into {where[1]} (merchant {merchant}): {rows}")
    return 0
