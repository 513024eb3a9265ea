"""keyCRM's request budget: at most N requests in any window, evenly paced, by priority.

keyCRM allows 60 requests a minute per key and IP. A token bucket holding a minute of tokens
would let 120 through in one 60 s window, so this keeps the last N requests and never sends the
(N+1)th until the first has left the window; requests are also spaced window/N apart so a backlog
never goes out in a burst. A request counts from when its answer came back, not from when we sent
it: keyCRM saw it somewhere in between, and network delay must not let N+1 requests land in one
of keyCRM's windows. Waiters are served by priority (look-ups for webhooks, then the order feed,
then the scan, then the catalog), FIFO within one. A 429 pauses everyone. No library we know does
priorities and a strict sliding window together, hence this small class.

The budget belongs to the process, not to a pipeline: a reload keeps it (and a 429 pause under
way). Its recent requests are saved in the state (`snapshot`/`restore`, in wall-clock time), so
a restart, or several in a minute, cannot overspend keyCRM's window either.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import structlog

__all__ = ["Priority", "RequestBudget"]

log = structlog.get_logger("stocksync.keycrm")


class Priority(enum.IntEnum):
    """Lower goes first."""

    LOOKUP = 0
    #: the order feed: cheap (a request per poll while nothing changes), and what it finds
    #: is fresh, so it goes before the scan's hours-long pass
    ORDERS = 1
    SCAN = 2
    CATALOG = 3


@dataclass(slots=True)
class _Request:
    sent: float
    done: float | None = None  # None while the request is under way


class RequestBudget:
    """Grants permission to send one request; every attempt (retries included) takes one."""

    def __init__(
        self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.spacing = window / limit
        self._clock = clock
        self._requests: deque[_Request] = deque(maxlen=limit)
        #: when the requests of the window were answered, oldest first (pruned as the window
        #: moves), and how many are under way: `sent_in_window` in O(1), however often
        #: /status and /metrics ask and however large N is
        self._answered: deque[float] = deque()
        self._under_way = 0
        self._queue: list[tuple[int, int]] = []
        self._seq = itertools.count()
        self._changed = anyio.Event()
        self._paused_until = 0.0
        #: called after each request's answer (PostgreSQL records it in the shared window)
        self.on_done: Callable[[], Awaitable[None]] | None = None

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def resize(self, limit: int) -> None:
        """A reload changed `requests_per_minute`: keep the recent requests, apply the new N."""
        if limit == self.limit:
            return
        self.limit = limit
        self.spacing = self.window / limit
        self._requests = deque(self._requests, maxlen=limit)
        self._notify()

    def snapshot(self, wall_now: float) -> dict[str, object]:
        """The recent requests and any pause, in wall-clock seconds, for the state file."""
        mono_now = self._clock()
        edge = mono_now - self.window

        def wall(t: float) -> float:
            return round(wall_now - (mono_now - t), 3)

        # A request still under way counts as if it ended now: keyCRM may be seeing it now.
        done = [wall(r.done if r.done is not None else mono_now) for r in self._requests]
        recent = [
            t for t, r in zip(done, self._requests, strict=True) if (r.done or mono_now) > edge
        ]
        paused = wall(self._paused_until) if self._paused_until > mono_now else None
        return {"done": recent, "paused_until": paused}

    def restore(self, saved: dict[str, object], wall_now: float) -> None:
        """Take over what an earlier process sent (see `snapshot`)."""
        mono_now = self._clock()
        done = saved.get("done")
        if isinstance(done, list):
            times = sorted(float(t) for t in done if isinstance(t, int | float))
            taken = [mono_now - max(0.0, wall_now - t) for t in times[-self.limit :]]
            self._requests.extend(_Request(mono, mono) for mono in taken)
            self._answered_at(taken)
        paused = saved.get("paused_until")
        if isinstance(paused, int | float) and paused > wall_now:
            self._paused_until = max(self._paused_until, mono_now + (paused - wall_now))
        self._notify()

    def sent_in_window(self) -> int:
        """Requests sent in the last window: `budget use` on the dashboard."""
        self._prune()
        return min(self.limit, self._under_way + len(self._answered))

    def _prune(self) -> None:
        edge = self._clock() - self.window
        answered = self._answered
        while answered and answered[0] <= edge:
            answered.popleft()

    def _answered_at(self, times: Iterable[float]) -> None:
        """Count requests answered at these times (in any order) in the window."""
        self._answered = deque(sorted([*self._answered, *times]))

    def _ready_at(self) -> float:
        ready = self._paused_until
        if self._requests:
            ready = max(ready, self._requests[-1].sent + self.spacing)
        if len(self._requests) >= self.limit:
            oldest = self._requests[0].done
            ready = max(ready, math.inf if oldest is None else oldest + self.window)
        return ready

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def preload(self, ages: Iterable[float]) -> None:
        """Count requests another replica made `ages` seconds ago (a new leader inherits its
        predecessor's window, kept in PostgreSQL by `daemon.store.pg.budget`)."""
        now = self._clock()
        inherited = [_Request(now - age, now - age) for age in ages if 0 <= age < self.window]
        self._answered_at(r.sent for r in inherited)
        merged = sorted([*self._requests, *inherited], key=lambda r: r.sent)
        self._requests = deque(merged, maxlen=self.limit)
        self._notify()

    def pause(self, seconds: float) -> None:
        """keyCRM said slow down (429): nobody sends for `seconds`."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._notify()

    @asynccontextmanager
    async def request(self, priority: Priority) -> AsyncIterator[None]:
        """Wait for this request's turn; the block is the request, until its answer is read."""
        entry = await self._acquire(priority)
        try:
            yield
        finally:
            entry.done = self._clock()
            self._under_way -= 1
            self._answered.append(entry.done)  # the clock only moves on: still in order
            self._prune()
            self._notify()
            if self.on_done is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.on_done()
                    except Exception:
                        log.debug("keycrm.budget_not_shared")

    async def _acquire(self, priority: Priority) -> _Request:
        key = (int(priority), next(self._seq))
        heapq.heappush(self._queue, key)
        try:
            while True:
                wait: float | None = None
                if self._queue[0] == key:
                    wait = self._ready_at() - self._clock()
                    if wait <= 0:
                        heapq.heappop(self._queue)
                        entry = _Request(self._clock())
                        self._requests.append(entry)
                        self._under_way += 1
                        self._notify()
                        return entry
                event = self._changed
                with anyio.move_on_after(None if wait is None or math.isinf(wait) else wait):
                    await event.wait()
        except BaseException:
            if key in self._queue:
                self._queue.remove(key)
                heapq.heapify(self._queue)
                self._notify()
            raise
