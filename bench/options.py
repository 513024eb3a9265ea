"""What the command line chose: sizes and durations shared by every benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Options"]


@dataclass(frozen=True, slots=True)
class Options:
    """`skus=None` lets each benchmark use its own default size (`big`: the million-SKU one)."""

    workdir: Path
    skus: int | None = None
    items: int = 3000
    #: how long to drive changes (None: each benchmark's own, growth 30 s, orderfeed 60 s)
    seconds: float | None = None
    change_rate: float = 100.0
    channels: int = 2
    big: bool = False
    lease_ttl: float = 15.0
    #: orderfeed: the daemon's `order_feed_interval`, in seconds
    feed_interval: float = 15.0
    merchants: int = 200
    #: runs of each benchmark; each figure printed is their median (`report.median_of`)
    repeat: int = 1

    def size(self, default: int, big: int | None = None) -> int:
        if self.skus is not None:
            return self.skus
        return big if self.big and big is not None else default

    def drive(self, default: float) -> float:
        """How long to drive changes: `--seconds`, or the benchmark's own default."""
        return default if self.seconds is None else self.seconds
