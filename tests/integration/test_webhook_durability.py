"""A webhook answered 2xx survives a SIGKILL of the real daemon (SQLite state).

The scan is held for the whole test, so only the webhook's look-up can carry the change: if
the SKU lived only in the killed process's memory, the channel would wait for the next scan.
"""

from __future__ import annotations

import anyio
import pytest

from tests.conftest import World, eventually
from tests.integration.test_lifecycle import free_port, post_webhook
from tests.integration.test_restart import run_cli
from tests.integration.test_sync import available, in_sync

pytestmark = pytest.mark.anyio


def lookups_of(world: World, sku: str) -> int:
    return sum(
        1
        for _, path, query in world.keycrm.requests
        if path.endswith("/offers/stocks") and sku in query.get("filter[offers_sku]", "").split(",")
    )


async def test_a_webhook_answered_before_a_sigkill_is_looked_up_after_the_restart(
    world: World,
) -> None:
    world.keycrm.populate(5)
    await world.add_shop("pos")
    port = free_port()
    path = world.write_config(listen=f"127.0.0.1:{port}")
    first = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: in_sync(world), timeout=20)
        world.keycrm.scan_gate = anyio.Event()  # from now on only look-ups read stock
        world.keycrm.lookup_gate = anyio.Event()  # and they hang until the kill
        offer = next(iter(world.keycrm.offers.values()))
        sku = offer.sku or ""
        offer.stock = {1: (41.0, 0.0)}
        assert await post_webhook(port, world.webhook_token, [sku]) == 202
        await eventually(lambda: lookups_of(world, sku) == 1)  # asked, never answered
    finally:
        first.kill()
        await first.wait()
    assert not in_sync(world)
    world.keycrm.lookup_gate.set()  # the killed process's request completes into the void
    second = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: in_sync(world), timeout=20)
        assert world.shops["pos"].quantity(offer.barcode or "", "S1") == available(world, sku)
        assert lookups_of(world, sku) == 2  # the restarted daemon asked again
    finally:
        second.terminate()
        await second.wait()
        world.keycrm.scan_gate.set()
