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
    seconds: float = 30.0
    change_rate: float = 100.0
    channels: int = 2
    big: bool = False
    lease_ttl: float = 15.0
    merchants: int = 200

    def size(self, default: int, big: int | None = None) -> int:
        if self.skus is not None:
            return self.skus
        return big if self.big and big is not None else default
