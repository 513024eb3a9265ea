"""The mass-change guard of one scan, as a value handed to whoever plans that scan's pages.

A keyCRM glitch that returns zeros, or a wrong mapping, could empty every channel in a minute.
Each scan (or re-plan after a rule change) gets its own `ScanGuard`: once more than
`guard_fraction` of a channel's in-stock items (and at least `GUARD_MIN_ITEMS`) have gone to zero
in it, further zeroes are held. They go out when a later complete scan confirms them, or when an
operator resyncs. Look-ups triggered by webhooks plan without a guard: a single sell-out must
reach channels at once. Nothing here is shared between scans, so a re-plan cannot end the guard
of a scan that runs beside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["GUARD_MIN_ITEMS", "ScanGuard"]

#: Below this many zeroes in one scan the guard never trips: small shops do sell out.
GUARD_MIN_ITEMS = 10


@dataclass(slots=True)
class ScanGuard:
    """How many zeroes each channel may still take in scan number `scan`."""

    scan: int
    allowed: dict[str, int]
    zeroed: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)

    @classmethod
    def for_scan(
        cls,
        scan: int,
        channels: Iterable[str],
        in_stock: Mapping[str, int],
        fraction: float,
    ) -> ScanGuard:
        """`in_stock`: per channel, items whose acknowledged value is above zero now."""
        allowed = {
            name: max(GUARD_MIN_ITEMS, int(fraction * in_stock.get(name, 0))) for name in channels
        }
        return cls(scan, allowed)

    def admit(self, channel: str) -> bool:
        """One more zero for `channel`: True if it may go out, False if it must be held."""
        if self.zeroed[channel] < self.allowed.get(channel, GUARD_MIN_ITEMS):
            self.zeroed[channel] += 1
            return True
        self.held[channel] += 1
        return False
