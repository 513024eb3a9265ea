"""Channel rate held: a real `stocksync run` pushing to a zero-latency fake at `rate_limit = 100/s`.

The Inventory Update API takes one item a request, so N items are N requests; the fake stamps
each on arrival. The scan feeds 50 items a keyCRM page at 100 pages a second, far faster than the
channel drains them, so the dispatcher always has work: any shortfall is the pacing's.
"""

from __future__ import annotations

import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from bench.options import Options
from bench.report import Figure
from bench.world import DaemonProcess, Fakes, free_port

__all__ = ["RATE", "busiest_second", "run"]

RATE = 100.0


def busiest_second(times: list[float]) -> int:
    """The most requests in any half-open one-second window."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(options: Options) -> list[Figure]:
    items = options.items
    fakes = Fakes(items)
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        async with AsyncExitStack() as stack:
            await fakes.start(stack)
            port = free_port()
            channel = fakes.channel(
                "inventory_api", "pos", Path(folder), f'rate_limit = "{RATE:g}/s"'
            )
            config = fakes.write_config(
                Path(folder), channel, port=port, sync='debounce = "0s"\nmax_delay = "1s"'
            )
            daemon = DaemonProcess(config, port, fakes.env, Path(folder) / "daemon.log")
            await daemon.start()
            try:
                stamps = fakes.arrivals["pos"]
                with anyio.fail_after(items / RATE * 2 + 60):
                    while len(stamps) < items:
                        await anyio.sleep(0.1)
            finally:
                await daemon.stop()
    arrivals = fakes.arrivals["pos"][:items]
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    note = f"{items:,} items, one a request, zero latency, real daemon"
    return [
        Figure(
            "rate",
            "rate.held",
            "channel rate held at rate_limit = 100/s",
            achieved / RATE,
            "of the limit",
            0.97,
            "higher",
            note,
        ),
        Figure(
            "rate",
            "rate.busiest_second",
            "busiest sliding second at rate_limit = 100/s",
            busiest_second(arrivals) / RATE,
            "of the limit",
            1.05,
            "lower",
            note,
        ),
    ]
