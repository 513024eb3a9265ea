"""The look-up queue: SKUs a webhook named, waiting to be looked up in keyCRM.

First in, first out, each SKU once, and bounded: a flood of SKUs cannot starve the ones before
it, and what overflows is left to the next scan (and counted by the caller). The queue belongs to
the process, not to one pipeline, so a reload never drops the SKUs that were waiting.
"""

from __future__ import annotations

import itertools

import anyio

__all__ = ["LOOKUP_QUEUE_CAP", "LookupQueue"]

#: SKUs waiting for a look-up at most; more are left to the next scan
LOOKUP_QUEUE_CAP = 10_000


class LookupQueue:
    """An insertion-ordered set of SKUs with a cap, and an event for the consumer."""

    def __init__(self, cap: int | None = None) -> None:
        self.cap = LOOKUP_QUEUE_CAP if cap is None else cap
        self._skus: dict[str, None] = {}
        self._wake = anyio.Event()

    def __len__(self) -> int:
        return len(self._skus)

    def push(self, skus: list[str]) -> int:
        """Queue these SKUs (those already waiting keep their place); return how many overflowed."""
        overflow = 0
        for sku in skus:
            if sku in self._skus:
                continue
            if len(self._skus) >= self.cap:
                overflow += 1
                continue
            self._skus[sku] = None
        self._wake.set()
        return overflow

    def take(self, limit: int) -> list[str]:
        """The oldest `limit` SKUs, out of the queue."""
        batch = list(itertools.islice(self._skus, limit))
        for sku in batch:
            del self._skus[sku]
        return batch

    def put_back(self, batch: list[str]) -> None:
        """A batch that could not be looked up goes back to the front, the cap still holding."""
        self._skus = dict.fromkeys([*batch, *self._skus])
        while len(self._skus) > self.cap:
            self._skus.popitem()

    async def wait(self, count: int = 1) -> None:
        """Until at least `count` SKUs are queued."""
        while len(self._skus) < count:
            await self._wake.wait()
            self._wake = anyio.Event()
