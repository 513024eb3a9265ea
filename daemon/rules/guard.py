"""The mass-change guard of one scan, as a value handed to whoever plans that scan's pages.

A keyCRM glitch that returns zeros, or a wrong mapping, could empty every channel in a minute.
Each scan (or re-plan, or catalog pass) gets its own `ScanGuard`. Every zero it plans that takes
an in-stock item out of stock is held (`held` in the store) until the pass has a verdict: a
zero let through early could not be called back once the count passed the fraction, and
design.md wants *all* of a mass change's zeroes held, not the excess. The verdict
(`daemon.reconcile.holds`) releases them when the channel lost no more than `guard_fraction` of its
in-stock items (and at most `GUARD_MIN_ITEMS`), and otherwise keeps every one of them held
until an operator releases the hold by name. Look-ups triggered by webhooks plan without a
guard: a single sell-out reaches channels at once. Nothing here is shared between scans, so a
re-plan cannot end the guard of a scan that runs beside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["GUARD_MIN_ITEMS", "ScanGuard"]

#: Up to this many zeroes in one scan the guard never trips: small shops do sell out.
GUARD_MIN_ITEMS = 10


@dataclass(slots=True)
class ScanGuard:
    """The zeroes scan number `scan` held per channel, and how many a channel may lose."""

    scan: int
    allowed: dict[str, int]
    #: per channel, items in stock (acknowledged above zero) when the scan began
    in_stock: dict[str, int] = field(default_factory=dict)
    fraction: float = 1.0
    held: Counter[str] = field(default_factory=Counter)
    #: per channel, how many of `held` the hold has already counted and logged
    reported: Counter[str] = field(default_factory=Counter)

    @classmethod
    def for_scan(
        cls,
        scan: int,
        channels: Iterable[str],
        in_stock: Mapping[str, int],
        fraction: float,
    ) -> ScanGuard:
        """`in_stock`: per channel, items whose acknowledged value is above zero now."""
        names = list(channels)
        allowed = {
            name: max(GUARD_MIN_ITEMS, int(fraction * in_stock.get(name, 0))) for name in names
        }
        return cls(scan, allowed, {name: in_stock.get(name, 0) for name in names}, fraction)

    def hold(self, channel: str) -> int:
        """One more zero for `channel`, held until the verdict; returns the scan that holds it."""
        self.held[channel] += 1
        return self.scan

    def trips(self, channel: str, zeroes: int) -> bool:
        """Whether `zeroes` held zeroes are a mass change for `channel`."""
        return zeroes > self.allowed.get(channel, GUARD_MIN_ITEMS)

    def reason(self, channel: str, zeroes: int) -> str:
        """Why a hold began, as `/status` and the logs say it."""
        return (
            f"scan {self.scan} would zero {zeroes} of {self.in_stock.get(channel, 0)} "
            f"in-stock items (fraction {self.fraction:g})"
        )
