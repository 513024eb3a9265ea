"""What the pipeline needs from persistent state, and the values it gets back.

Every method is one transaction. Backends keep no per-item state in memory: a million SKUs
cost disk, not RAM. Item states only change through `daemon.store.lifecycle`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from daemon.core.models import CatalogEntry, ItemValue, StockLevel, StockRecord, Value, Verdict
from daemon.rules.guard import ScanGuard
from daemon.rules.plan import Contribution
from daemon.store.health import StoreHealth
from daemon.store.lifecycle import Timing
from daemon.store.pages import PageMark, ScanPage

__all__ = ["Enqueued", "HistoryRow", "ItemRow", "LookupEntry", "LookupStore", "Settled", "Store"]


@dataclass(frozen=True, slots=True)
class Settled:
    """What `settle` reports: change-to-acknowledgement ages, and attempts of the unfinished."""

    propagated: list[float]
    #: attempts so far, per item that was not acknowledged (for the log's `attempt`)
    attempts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemRow:
    """An item as `/status`, `once` and the tests see it."""

    channel: str
    key: str
    desired: Value
    acked: Value | None
    status: str
    attempts: int
    last_error: str | None
    diverged_at: float | None
    changed_at: float


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One push of one item: the audit trail of `stocksync history`."""

    channel: str
    key: str
    before: Value | None
    after: Value
    outcome: str
    error: str | None
    at: float


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What `enqueue_lookups` did: SKUs that joined the queue, and those the cap turned away."""

    added: int
    overflow: int


@dataclass(frozen=True, slots=True)
class LookupEntry:
    """One claimed look-up: its SKU, the `seq` that `lookups_done` checks, when it was queued."""

    sku: str
    seq: int
    queued_at: float


class Store(Protocol):
    """The state store. Implementations: `SQLiteStore` (PostgreSQL next, same contract).

    A call that fails for a reason that may pass raises `StoreUnavailable` and leaves nothing
    half-done; `health` says whether writes work now.
    """

    health: StoreHealth
    #: history rows kept per item at most (the newest), besides the retention period
    history_per_item: int

    # --- keyCRM records --------------------------------------------------------------------------

    async def save_stock(
        self, levels: Sequence[StockLevel], scan: int | None, page: ScanPage | None = None
    ) -> list[StockRecord]:
        """Store stock levels; return the records that changed. `scan` marks them seen by it.
        `page`: the scan page they came from, recorded with them (`daemon.store.pages`)."""
        ...

    async def scan_pages(self, scan: int) -> dict[int, PageMark]:
        """Scan `scan` starts: forget the pages an unfinished attempt at it recorded, and
        return the marks of the pages of complete scan `scan - 1`, by page number."""
        ...

    async def skip_page(self, mark: PageMark, scan: int) -> list[tuple[str, int]] | None:
        """Scan `scan` got the bytes of `mark`'s page again: if no record of it changed since it
        was recorded, move its SKUs' scan marks (one statement), record it for `scan`, and
        return its (SKU, offer id) pairs in order. None, changing nothing: parse it."""
        ...

    async def drop_scan_pages(self, scan: int) -> None:
        """Scan `scan` completed: the pages of older scans are compared with no more."""
        ...

    async def save_catalog(self, entries: Sequence[CatalogEntry]) -> list[StockRecord]:
        """Store catalog fields; return the records (with stock) that changed."""
        ...

    async def vanished(self, scan: int) -> list[StockRecord]:
        """Zero the records not seen by complete scan `scan` nor the one before; return them."""
        ...

    async def records(self, after: str = "", limit: int = 500) -> list[StockRecord]:
        """Up to `limit` records with stock, SKUs after `after` in order (a paged re-plan)."""
        ...

    async def records_of(self, skus: Sequence[str]) -> list[StockRecord]:
        """The records with stock among these SKUs, as stored now (in SKU order)."""
        ...

    # --- planning --------------------------------------------------------------------------------

    async def replace_shares(
        self, channel: str, skus: Sequence[str], shares: Sequence[tuple[str, Contribution]]
    ) -> dict[str, list[Contribution]]:
        """Swap what these SKUs give to the channel; return every share of each affected key."""
        ...

    async def set_desired(
        self,
        channel: str,
        values: dict[str, Value],
        now: float,
        timing: Timing,
        guard: ScanGuard | None = None,
    ) -> int:
        """Record new desired values; return how many items now wait to be pushed.

        With a `guard`, every zero that takes an in-stock item out of stock asks it first, and
        the ones it refuses are held, in the same transaction.
        """
        ...

    # --- the work queue --------------------------------------------------------------------------

    async def claim(self, channel: str, now: float, limit: int) -> list[ItemValue]:
        """Up to `limit` due pending items, fresh before backlog, now `sending` these values."""
        ...

    async def count_due(self, channel: str, now: float, limit: int) -> int:
        """How many pending items are due now, counting up to `limit` (to fill a batch)."""
        ...

    async def next_due(self, channel: str) -> float | None:
        """When the channel's next pending item becomes due (None: nothing pending)."""
        ...

    async def settle(
        self,
        channel: str,
        verdicts: Sequence[Verdict],
        now: float,
        timing: Timing,
        backoff: Callable[[int], float],
    ) -> Settled:
        """Apply push outcomes to claimed items and append them to the history."""
        ...

    async def release(
        self,
        channel: str,
        keys: Sequence[str],
        now: float,
        timing: Timing,
        *,
        sent: bool = True,
        not_before: float = 0.0,
    ) -> None:
        """Claims that end without an answer (see `lifecycle.release`)."""
        ...

    async def recover(self, now: float, grace: Mapping[str, float] | None = None) -> int:
        """At start: every item left `sending` by a dead process is pending again, forced, and
        due after its channel's `grace` (seconds): a request the dead process left on the wire
        may still land, and must not land after the push that corrects it."""
        ...

    async def flush(self, channel: str, now: float) -> None:
        """Make debounced items due now (graceful stop); retry times still hold."""
        ...

    async def force_all(self, now: float) -> int:
        """A resync: every item is pushed again whatever was acknowledged, behind fresh work."""
        ...

    async def mark_drifted(
        self, channel: str, live: Sequence[tuple[str, Value]], now: float
    ) -> list[str]:
        """Read-back found these (key, live value): the drifted ones (still `ok`, holding
        neither their acknowledged nor their desired value) are pushed again and recorded in
        the history as `drift`. Returns their keys."""
        ...

    async def reassert(self, channel: str, now: float) -> int:
        """Push every acknowledged item of the channel again, behind all other work."""
        ...

    async def items_page(self, channel: str, after: str, limit: int) -> list[ItemRow]:
        """Up to `limit` items of the channel with keys after `after`, in key order."""
        ...

    async def release_held(
        self, channel: str | None, now: float, *, by: str | None = None
    ) -> dict[str, int]:
        """End the holds on the channel's held zeroes (every channel's with None): they may go
        out now. `by` (who released them, and how) puts one `released` row per item in the
        history; the scan's own verdict passes none. Returns how many per channel."""
        ...

    # --- reading ---------------------------------------------------------------------------------

    async def positive_acked(self) -> dict[str, int]:
        """Per channel, items whose acknowledged value is above zero (the guard's baseline)."""
        ...

    async def items(self, channel: str | None = None) -> list[ItemRow]: ...

    async def skus(self, channel: str, keys: Sequence[str]) -> dict[str, list[str]]:
        """The SKUs that make up each item (for logs about that item)."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """Items per channel per status."""
        ...

    async def oldest_pending(self) -> dict[str, float]:
        """Per channel, when its oldest unacknowledged desired value diverged (for the lag)."""
        ...

    async def history(self, sku: str) -> list[HistoryRow]: ...

    async def prune_history(self, before: float) -> int: ...

    async def get_meta(self, name: str) -> str | None: ...

    async def set_meta(self, name: str, value: str) -> None: ...

    async def close(self) -> None: ...


class LookupStore(Protocol):
    """The durable queue of webhook look-ups in an embedded state (SQLite).

    A webhook is answered 2xx only once its SKUs are committed here, so a kill loses none; an
    entry leaves only when its look-up's answer is stored. PostgreSQL keeps its own queue,
    merchant-keyed and fenced by the lease (`daemon.store.pg.lookups`), with the same semantics.
    """

    async def enqueue_lookups(self, skus: Sequence[str], cap: int, now: float) -> Enqueued:
        """Queue SKUs, first in first out, in one transaction. A SKU already queued keeps its
        place and is claimable again (its look-up in flight may have read the stock before
        the change); new SKUs beyond `cap` queued entries are turned away and counted."""
        ...

    async def claim_lookups(
        self, claimer: str, limit: int, now: float, reclaim_after: float = 60.0
    ) -> list[LookupEntry]:
        """Up to `limit` entries, oldest first, now claimed by `claimer`: unclaimed ones,
        ones claimed by another claimer (a process that died), or claimed over
        `reclaim_after` seconds ago (a look-up that hung)."""
        ...

    async def lookups_done(self, entries: Sequence[LookupEntry]) -> int:
        """Remove looked-up entries not queued again since their claim; return how many."""
        ...

    async def unclaim_lookups(self, entries: Sequence[LookupEntry]) -> None:
        """A look-up failed: its entries are claimable again at once, in their place."""
        ...

    async def lookup_depth(self) -> tuple[int, float | None]:
        """Entries queued (claimed ones included) and when the oldest was queued (None: none)."""
        ...
