"""Per-item debouncing for one channel: a pure scheduler that takes `now` as an argument.

An item is due once its desired value has been quiet for `debounce`, or `max_delay` after it first
diverged, whichever comes first, and never before its retry time. Fresh changes go before the
backlog of a resync. An item handed out is *in flight* until `done()`: it is never handed out
twice at once, so at most one request per item is under way.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from daemon.store import Pending

__all__ = ["Debouncer"]


@dataclass(slots=True)
class _Entry:
    due: float
    fresh: bool
    not_before: float


class Debouncer:
    """Which items of one channel are due, in what order."""

    def __init__(self, debounce: float, max_delay: float) -> None:
        self.debounce = debounce
        self.max_delay = max_delay
        self._entries: dict[str, _Entry] = {}
        self._in_flight: set[str] = set()
        self._fresh: list[tuple[float, int, str]] = []
        self._backlog: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Items waiting or in flight."""
        return len(self._entries.keys() | self._in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def touch(self, item: Pending) -> None:
        """(Re)schedule an item after its desired value changed or a push came back unfinished."""
        quiet = min(item.changed_at + self.debounce, item.diverged_at + self.max_delay)
        due = max(quiet, item.next_attempt)
        old = self._entries.get(item.key)
        fresh = item.fresh or (old is not None and old.fresh)
        entry = _Entry(due, fresh, item.next_attempt)
        self._entries[item.key] = entry
        if item.key not in self._in_flight:
            self._push(item.key, entry)

    def _push(self, key: str, entry: _Entry) -> None:
        heap = self._fresh if entry.fresh else self._backlog
        heapq.heappush(heap, (entry.due, next(self._seq), key))

    def _head(self, heap: list[tuple[float, int, str]]) -> tuple[float, int, str] | None:
        """The heap's first live entry, dropping stale ones (rescheduled, or already taken)."""
        while heap:
            due, _, key = heap[0]
            entry = self._entries.get(key)
            live = entry is not None and entry.due == due and key not in self._in_flight
            if live and entry is not None and (heap is self._fresh) == entry.fresh:
                return heap[0]
            heapq.heappop(heap)
        return None

    def next_due(self) -> float | None:
        """When the next item becomes due, or None when nothing waits."""
        heads = [h[0] for h in (self._head(self._fresh), self._head(self._backlog)) if h]
        return min(heads) if heads else None

    def take(self, now: float, limit: int) -> list[str]:
        """Up to `limit` due items, fresh ones first; they are in flight until `done()`."""
        taken: list[str] = []
        for heap in (self._fresh, self._backlog):
            while len(taken) < limit:
                head = self._head(heap)
                if head is None or head[0] > now:
                    break
                heapq.heappop(heap)
                key = head[2]
                del self._entries[key]
                self._in_flight.add(key)
                taken.append(key)
        return taken

    def done(self, key: str) -> None:
        """The push of `key` ended; if it was touched meanwhile, it is scheduled again."""
        self._in_flight.discard(key)
        entry = self._entries.get(key)
        if entry is not None:
            self._push(key, entry)

    def flush(self, now: float) -> None:
        """Make every debounced item due now (graceful stop); retry times still hold."""
        for key, entry in list(self._entries.items()):
            due = max(now, entry.not_before)
            if entry.due > due:
                entry.due = due
                if key not in self._in_flight:
                    self._push(key, entry)

    def clear(self) -> None:
        self._entries.clear()
        self._fresh.clear()
        self._backlog.clear()
