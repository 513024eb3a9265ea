"""How late the event loop wakes up: the one number that says something froze the loop.

Everything the daemon serves shares one event loop: `/healthz`, webhooks, pushes, the scan. A
job that blocks it (a slow synchronous call, a long pure-Python stretch, a starved CPU) delays
all of them alike, and nothing else shows it until a probe times out. A ticker that asks to
wake every `INTERVAL` and records how much later it woke measures exactly that delay.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from prometheus_client import Histogram

__all__ = ["INTERVAL", "watch_loop"]

#: how often the ticker wakes; short enough to catch a stall of a fraction of a second
INTERVAL = 0.25


async def watch_loop(
    lag: Histogram,
    *,
    interval: float = INTERVAL,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Observe, forever, how many seconds after it was due each tick ran."""
    while True:
        due = clock() + interval
        await anyio.sleep(interval)
        lag.observe(max(0.0, clock() - due))
