"""The PostgreSQL DSN of `daemon.state`: checked at config time, described without secrets.

The DSN never carries the password: it sits in the config file and may be logged or shown in
an error. The password comes from a secret (`state_password_env`/`_file`) or from libpq's own
`PGPASSFILE` or `PGPASSWORD`, and is handed to libpq as a separate parameter. This module
needs only libpq's parser, so loading a config does not load the pool.
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict
from psycopg.errors import ProgrammingError

__all__ = ["SCHEMES", "check_dsn", "describe"]

#: The URI schemes libpq accepts; anything else in `daemon.state` is a SQLite file.
SCHEMES = ("postgresql://", "postgres://")


def check_dsn(dsn: str) -> str:
    """The DSN if libpq can parse it and it holds no password; a ValueError otherwise."""
    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        # libpq's message quotes the DSN, which may hold a password: say only what is wrong.
        raise ValueError("is not a valid PostgreSQL connection string") from exc
    if params.get("password"):
        raise ValueError(
            "must not contain the password: use state_password_env, state_password_file "
            "or PGPASSFILE"
        )
    return dsn


def describe(dsn: str) -> str:
    """`user@host:port/dbname` for logs and `/status`: no password, no other parameter.

    What the DSN leaves out comes from libpq's variables (`PGHOST`...), as libpq will take it.
    """
    params = conninfo_to_dict(dsn)

    def part(name: str, variable: str) -> str:
        return str(params.get(name) or os.environ.get(variable) or "")

    host = part("host", "PGHOST") or "localhost"
    port = part("port", "PGPORT")
    user = part("user", "PGUSER")
    dbname = part("dbname", "PGDATABASE") or user
    return f"{user + '@' if user else ''}{host}{':' + port if port else ''}/{dbname}"
