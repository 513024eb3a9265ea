"""The PostgreSQL backend: the same contract as SQLite, for several replicas on one database.

`PostgresStore` is its calls put together, one module per concern over one pool and its fenced,
locked transactions (`base.PostgresBase`, whose docstring tells the locking and fencing):
records.py (keyCRM records and the planning shares), queue.py (channel items and their work
queue), reading.py (reads, pruning, meta). The look-up queue of replicas is `lookups.py`, apart.
What the backends share beyond SQL is in `daemon.store.rows`.
"""

from __future__ import annotations

from daemon.store.pg.base import HISTORY_PER_ITEM
from daemon.store.pg.queue import PostgresQueue
from daemon.store.pg.reading import PostgresReading
from daemon.store.pg.records import PostgresRecords
from daemon.store.protocol import Store

__all__ = ["HISTORY_PER_ITEM", "PostgresStore"]


class PostgresStore(PostgresRecords, PostgresQueue, PostgresReading):
    """The state store in PostgreSQL; see `daemon.store.pg.base` for locking and fencing."""


def _keeps_the_protocol(store: PostgresStore) -> Store:
    """Never called: mypy checks here that `PostgresStore` is a `Store` as the protocol grows."""
    return store
