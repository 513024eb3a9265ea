"""The lifecycle's moves over many rows at once, as SQL: claim, acknowledge, force, reassert.

`daemon.store.lifecycle` decides every move of one item in Python. Loading a row into an `Item`,
moving it and writing all sixteen columns back cost most of the store's CPU per pushed item
(issue 21), so the four moves every pushed item makes in bulk are also written here as SQL: a
condition on a row (`where`) and the columns it sets (`sets`). Each is the very rule of its
lifecycle function, restricted to the rows `where` selects; tests/unit/test_moves.py runs every
move over items in every state and checks the row it leaves equals what the lifecycle function
makes of the same item, so the two cannot drift apart. A row `where` leaves out (a verdict on a
value that has since moved, a retry, a rejection) goes the lifecycle's way, loaded and written
whole.

The SQL is written once, for SQLite (`:name` parameters; `TRUE`/`FALSE` are 1/0 there) and
rendered for PostgreSQL by `pg` (`%(name)s`). Both backends keep their counts per status: SQLite
from what each statement moved (its callers count), PostgreSQL in its statement triggers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import LiteralString

from daemon.store.lifecycle import BACKLOG, FRESH

__all__ = ["ACKNOWLEDGE", "CLAIM", "FORCE", "FORCE_STAYS", "REASSERT", "Move", "bind", "pg"]


@dataclass(frozen=True, slots=True)
class Move:
    """One lifecycle move as SQL: the rows it applies to, and the columns it sets."""

    #: the lifecycle function it stands for (for the tests and the reader)
    function: str
    #: a condition on one row (its parameters by `:name`)
    where: str
    #: `column = expression, ...` (expressions read the row as it was)
    sets: str


#: `lifecycle.claim` of a due pending item (`:now`): the value in the row leaves.
CLAIM = Move(
    "claim",
    "status = 'pending' AND due_at <= :now",
    "status = 'sending', sent = desired, due_at = NULL",
)

#: `lifecycle.settle` of an acknowledged `:sent` whose desired value did not move meanwhile nor a
#: scan hold its zero: the item is `ok` (`:now` the acknowledgement's time).
ACKNOWLEDGE = Move(
    "settle",
    "status = 'sending' AND sent = :sent AND desired = :sent AND held_scan IS NULL",
    "status = 'ok', acked = :sent, acked_at = :now, sent = NULL, forced = FALSE, "
    f"priority = {FRESH}, attempts = 0, next_attempt = 0, due_at = NULL, last_error = NULL, "
    "held_scan = NULL, diverged_at = NULL",
)

#: The states `lifecycle.force` leaves where they are (only marked forced).
FORCE_STAYS = "('sending', 'held')"

#: `lifecycle.force` (a resync) of every row: pending behind fresh work, due `:now`.
FORCE = Move(
    "force",
    "TRUE",
    "forced = TRUE, attempts = 0, next_attempt = 0, "
    f"status = CASE WHEN status IN {FORCE_STAYS} THEN status ELSE 'pending' END, "
    f"priority = CASE WHEN status IN {FORCE_STAYS} THEN priority ELSE {BACKLOG} END, "
    f"diverged_at = CASE WHEN status IN {FORCE_STAYS} THEN diverged_at "
    "ELSE COALESCE(diverged_at, :now) END, "
    f"due_at = CASE WHEN status IN {FORCE_STAYS} THEN due_at ELSE :now END",
)

#: `lifecycle.reassert` of an `ok` item: pushed again behind everything else, due `:now`.
REASSERT = Move(
    "reassert",
    "status = 'ok'",
    f"forced = TRUE, status = 'pending', priority = {BACKLOG}, diverged_at = :now, due_at = :now",
)

_PARAMETER = re.compile(r"(?<![:\w]):([a-z_]+)")


def bind(sql: str, **expressions: str) -> str:
    """`sql` with the named parameters replaced by these SQL expressions (a column of the
    batch a statement joins, in place of one bound value per row)."""
    return _PARAMETER.sub(lambda m: expressions.get(m[1], m[0]), sql)


def pg(sql: str) -> LiteralString:
    """SQLite's `:name` parameters as psycopg's `%(name)s` (the SQL is this module's own)."""
    # mypy reads LiteralString as str (PEP 675 unsupported): no cast needed
    return _PARAMETER.sub(r"%(\1)s", sql)
