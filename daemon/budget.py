"""keyCRM's request budget: at most N requests in any window, evenly paced, by priority.

keyCRM allows 60 requests a minute per key and IP. A token bucket holding a minute of tokens
would let 120 through in one 60 s window, so this keeps the send times of the last N requests and
never sends the (N+1)th until the first has left the window; requests are also spaced window/N
apart so a backlog never goes out in a burst. Waiters are served by priority (look-ups for
webhooks, then the scan, then the catalog), FIFO within one. A 429 pauses everyone. No library we
know does priorities and a strict sliding window together, hence this small class.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["Priority", "RequestBudget"]


class Priority(enum.IntEnum):
    """Lower goes first."""

    LOOKUP = 0
    SCAN = 1
    CATALOG = 2


class RequestBudget:
    """Grants permission to send one request; every attempt (retries included) takes one."""

    def __init__(
        self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.spacing = window / limit
        self._clock = clock
        self._sent: deque[float] = deque(maxlen=limit)
        self._queue: list[tuple[int, int]] = []
        self._seq = itertools.count()
        self._changed = anyio.Event()
        self._paused_until = 0.0

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def sent_in_window(self) -> int:
        """Requests sent in the last window: `budget use` on the dashboard."""
        edge = self._clock() - self.window
        return sum(1 for t in self._sent if t > edge)

    def _ready_at(self) -> float:
        ready = self._paused_until
        if self._sent:
            ready = max(ready, self._sent[-1] + self.spacing)
        if len(self._sent) >= self.limit:
            ready = max(ready, self._sent[0] + self.window)
        return ready

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def pause(self, seconds: float) -> None:
        """keyCRM said slow down (429): nobody sends for `seconds`."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._notify()

    async def acquire(self, priority: Priority) -> None:
        """Wait for this request's turn."""
        entry = (int(priority), next(self._seq))
        heapq.heappush(self._queue, entry)
        try:
            while True:
                wait: float | None = None
                if self._queue[0] == entry:
                    wait = self._ready_at() - self._clock()
                    if wait <= 0:
                        heapq.heappop(self._queue)
                        self._sent.append(self._clock())
                        self._notify()
                        return
                event = self._changed
                with anyio.move_on_after(wait):
                    await event.wait()
        except BaseException:
            if entry in self._queue:
                self._queue.remove(entry)
                heapq.heapify(self._queue)
                self._notify()
            raise
