"""A channel's request pacer: holds a rate by schedule, not by measuring the gap since the last one.

A leaky bucket of one (what aiolimiter with capacity 1 is) lets a request go once a full interval
has passed since the previous one. Every late wake-up (timer granularity, a busy event loop, a
slow batch being built) is then lost for good, and a channel asked for 100/s gets 88-91. Here each
request takes the next slot of a fixed schedule (the previous slot plus one interval), so a
request that wakes late is followed by one that does not wait: the schedule catches up. Catching
up is bounded: after an idle or busy spell at most `burst` requests go back to back (never a whole
second's allowance at once, which is what the channels' own limits punish), so no sliding second
holds more than `rate + burst` requests.

Waiters queue on a lock and only the first one sleeps: slots are not handed out in advance, so
waiters that a stalled loop wakes late cannot all go at once, however many there are.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["Pacer"]


class Pacer:
    """Grants one request a slot per `1 / rate_per_second` seconds; shared by every sender."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int = 2,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.interval = 1.0 / rate_per_second
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = anyio.Lock()
        self._next = -float("inf")  # the earliest slot not yet taken

    async def acquire(self) -> None:
        """Wait for this request's slot (FIFO). A cancelled waiter takes no slot."""
        async with self._lock:
            now = self._clock()
            # How far behind `now` the schedule may have fallen is what bounds the burst.
            slot = max(self._next, now - (self.burst - 1) * self.interval)
            await self._sleep(max(0.0, slot - now))  # sleep(0) is still a checkpoint
            self._next = slot + self.interval
