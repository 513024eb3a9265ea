"""stocksync against the naive sync, on the same fakes: 1% of the SKUs change, how fast and at what
cost does Marketplacer hold the new stock again?

stocksync runs as a real `stocksync run` and learns of the change from keyCRM's webhook, as
deployed; the naive sync learns of it from its next full pull. The naive side is measured at its
best: rounds back to back, with the change landing just before a round starts (on average a change
waits half a round more). Both use the same keyCRM budget and Marketplacer's default limits (25
variants a request, 50 requests a second).
"""

from __future__ import annotations

import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import anyio

from bench.naive import NaiveSync
from bench.options import Options
from bench.report import Figure
from bench.world import DaemonProcess, Fakes, free_port, post_webhook

__all__ = ["run"]

REQUESTS_PER_MINUTE = 600
SHARE = 0.01


async def run(options: Options) -> list[Figure]:
    skus = options.size(10_000)
    fakes = Fakes(skus)
    round_seconds = skus / 50 / (REQUESTS_PER_MINUTE / 60) + skus / 25 / 50
    with tempfile.TemporaryDirectory(dir=options.workdir) as folder:
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
            await fakes.start(stack)
            port = free_port()
            channel = fakes.channel("marketplacer", "mp", Path(folder))
            config = fakes.write_config(
                Path(folder),
                channel,
                port=port,
                requests_per_minute=REQUESTS_PER_MINUTE,
                poll_interval="5m",
            )
            daemon = DaemonProcess(config, port, fakes.env, Path(folder) / "daemon.log")
            await daemon.start()
            try:
                await daemon.wait_settled(session, within=round_seconds * 3 + 60)
                await fakes.wait_consistent(30)
                keycrm_mark = len(fakes.arrivals["keycrm"])
                channel_mark = len(fakes.marketplacer.documents)
                changed = fakes.change(SHARE, seed=1)
                await post_webhook(session, daemon.base, fakes.env["BENCH_WEBHOOK_TOKEN"], changed)
                ours = await fakes.wait_consistent(120)
                our_requests = len(fakes.marketplacer.documents) - channel_mark
                our_keycrm = len(fakes.arrivals["keycrm"]) - keycrm_mark
            finally:
                await daemon.stop()

            naive = NaiveSync(
                session,
                keycrm=f"{fakes.urls['keycrm']}/v1",
                keycrm_key=fakes.env["BENCH_KEYCRM_KEY"],
                requests_per_minute=REQUESTS_PER_MINUTE,
                marketplacer=fakes.urls["marketplacer"],
                marketplacer_key=fakes.env["BENCH_MARKETPLACER_KEY"],
                rate=50,
                batch=25,
            )
            keycrm_mark = len(fakes.arrivals["keycrm"])
            channel_mark = len(fakes.marketplacer.documents)
            fakes.change(SHARE, seed=2)
            async with anyio.create_task_group() as group:
                group.start_soon(naive.run)
                theirs = await fakes.wait_consistent(round_seconds * 3 + 60)
                with anyio.fail_after(round_seconds * 3 + 60):
                    while naive.rounds < 1:  # it cannot know which items changed: all go out
                        await anyio.sleep(0.01)
                group.cancel_scope.cancel()
            their_requests = len(fakes.marketplacer.documents) - channel_mark
            their_keycrm = len(fakes.arrivals["keycrm"]) - keycrm_mark

    size = f"{skus:,} SKUs, {len(changed):,} changed, keyCRM {REQUESTS_PER_MINUTE}/min"
    return [
        Figure(
            "baseline",
            "baseline.consistency_seconds",
            "time to consistency after 1% changed: stocksync",
            ours,
            "s",
            note=f"{size}; webhook, debounce 2 s",
        ),
        Figure(
            "baseline",
            "baseline.naive_consistency_seconds",
            "time to consistency after 1% changed: naive pull-and-push-all",
            theirs,
            "s",
            note=f"{size}; best case, a round starting right after the change",
        ),
        Figure(
            "baseline",
            "baseline.speedup",
            "naive time / stocksync time",
            theirs / ours,
            "x",
        ),
        Figure(
            "baseline",
            "baseline.channel_requests",
            "Marketplacer requests to get there: stocksync",
            our_requests,
            "requests",
            note=f"keyCRM requests: {our_keycrm}",
        ),
        Figure(
            "baseline",
            "baseline.naive_channel_requests",
            "Marketplacer requests to get there: naive (its whole round)",
            their_requests,
            "requests",
            note=f"keyCRM requests: {their_keycrm}",
        ),
    ]
