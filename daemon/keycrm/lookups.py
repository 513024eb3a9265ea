"""The look-up queue: SKUs a webhook named, waiting to be looked up in keyCRM, on disk.

A webhook is answered 2xx only once its SKUs are committed to the state (`push`), and a SKU
leaves the queue only once its look-up's answer is stored (`done`): a kill at any moment costs
at most one more look-up after the restart, never a change left for the next scan (hours away
at a million SKUs). First in, first out, each SKU once, and bounded: a flood of SKUs cannot
starve the ones before it, and what overflows is left to the next scan (and counted by the
caller). The queue belongs to the process, not to one pipeline, so a reload drops nothing.

One consumer, the pipeline's `Source.run_lookups`, claims a batch (`take`), looks it up, and
calls `done` (or `put_back` when the look-up failed). The semantics are those of PostgreSQL's
queue (`daemon.store.pg.lookups`): a SKU named again during its look-up stays queued, since the
look-up may have read the stock before the change; a claim left by a dead process, or one
older than `reclaim_after`, is taken again.

Only a count is kept in memory, never the SKUs: the consumer waits on it (for a first SKU, or
for a full request's worth within the window `ArrivalRate.window` gives) without asking the
store.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Sequence

import anyio

from daemon.store import LookupEntry, LookupStore

__all__ = ["LOOKUP_QUEUE_CAP", "ArrivalRate", "LookupQueue"]

#: SKUs waiting for a look-up at most; more are left to the next scan
LOOKUP_QUEUE_CAP = 10_000
#: a claim older than this (a look-up that hung past every timeout) is taken again
RECLAIM_AFTER = 60.0
#: SKUs one look-up request carries at most (keyCRM's `limit`)
FULL = 50


class ArrivalRate:
    """SKUs queued per second lately (decayed over `horizon` seconds), and how long a look-up
    should wait for more of them. Pure: `now` is given.

    A fixed window is wrong both ways: 250 ms carried 13 SKUs a request at 50 changes/s, and
    made a lone change wait 250 ms for company that never came. So: when fewer than one more
    SKU is expected within the configured window, ask at once; under load, wait until a full
    request's worth is expected, up to twice the configured window (the change-to-channel
    latency stays within the debounce plus a second)."""

    def __init__(self, horizon: float = 0.5) -> None:
        self.horizon = horizon
        self._weight = 0.0
        self._at: float | None = None

    def arrived(self, count: int, now: float) -> None:
        self._weight = self._decayed(now) + count
        self._at = now

    def per_second(self, now: float) -> float:
        return self._decayed(now) / self.horizon

    def window(self, configured: float, now: float) -> float:
        """Seconds a look-up waits for more SKUs (it goes earlier once `FULL` are queued)."""
        rate = self.per_second(now)
        expected = rate * configured
        if configured <= 0 or expected < 1:
            return 0.0
        return min(FULL / rate, configured * min(2.0, max(1.0, expected / 5)))

    def _decayed(self, now: float) -> float:
        if self._at is None:
            return 0.0
        return self._weight * math.exp(-max(0.0, now - self._at) / self.horizon)


class LookupQueue:
    """A durable, insertion-ordered set of SKUs with a cap, and an event for the consumer."""

    def __init__(
        self,
        store: LookupStore,
        cap: int | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cap = LOOKUP_QUEUE_CAP if cap is None else cap
        self._store = store
        self._clock = clock
        #: claims of this process; one left in the table by a dead process is stale at once
        self._claimer = secrets.token_hex(8)
        #: entries in the table as far as this process knows; None until `load` or `take` says
        self._depth: int | None = None
        self._wake = anyio.Event()
        #: how fast SKUs are queued: the consumer's window (`ArrivalRate.window`)
        self.arrivals = ArrivalRate()

    def __len__(self) -> int:
        return self._depth or 0

    async def load(self) -> None:
        """At start: count what a killed process left queued, so it is looked up first.
        Raises `StoreUnavailable` (the count stays unknown: the consumer asks the store)."""
        self._depth, _oldest = await self._store.lookup_depth()
        self._notify()

    async def push(self, skus: Sequence[str]) -> int:
        """Queue these SKUs durably (those already waiting keep their place); return how many
        the cap turned away. Raises `StoreUnavailable`, having queued nothing."""
        done = await self._store.enqueue_lookups(skus, self.cap, self._clock())
        self.arrivals.arrived(done.added, self._clock())
        if self._depth is not None:
            self._depth += done.added
        self._notify()
        return done.overflow

    def window(self, configured: float) -> float:
        """How long the consumer waits for a fuller request now (see `ArrivalRate`)."""
        return self.arrivals.window(configured, self._clock())

    async def take(self, limit: int) -> list[LookupEntry]:
        """Claim the oldest `limit` entries (they stay on disk until `done`)."""
        batch = await self._store.claim_lookups(
            self._claimer, limit, self._clock(), reclaim_after=RECLAIM_AFTER
        )
        if not batch:
            self._depth = 0  # one consumer: nothing of ours is claimed while it takes
        elif self._depth is None or self._depth < len(batch):
            self._depth = len(batch)
        return batch

    async def done(self, batch: Sequence[LookupEntry]) -> None:
        """The batch's answers are stored: its entries leave, except those named again since."""
        removed = await self._store.lookups_done(batch)
        if self._depth is not None:
            self._depth = max(0, self._depth - removed)

    async def put_back(self, batch: Sequence[LookupEntry]) -> None:
        """A batch that could not be looked up is claimable again at once, in its place."""
        await self._store.unclaim_lookups(batch)
        self._notify()

    async def wait(self, count: int = 1) -> None:
        """Until at least `count` SKUs are queued (at once while the count is unknown)."""
        while self._depth is not None and self._depth < count:
            await self._wake.wait()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = anyio.Event()
