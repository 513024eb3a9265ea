"""The order feed on PostgreSQL: only the leader polls, and a new leader continues from the
watermark its predecessor stored, so a sale made while nobody led still reaches the channel."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest

from daemon.keycrm.client import keycrm_time
from tests.conftest import World, eventually
from tests.integration.test_sync import available, in_sync
from tests.postgres.test_ha import Replicas, leader_elected

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
async def replicas(world: World, pg_dsn: str) -> AsyncIterator[Replicas]:
    world.keycrm.populate(10)
    await world.add_shop("pos")
    group = Replicas(world, pg_dsn)
    try:
        yield group
    finally:
        with anyio.CancelScope(shield=True):
            await group.stop()


def polls(world: World, since: int = 0) -> list[dict[str, str]]:
    return [q for _, path, q in world.keycrm.requests[since:] if path == "/v1/order"]


async def test_a_new_leader_continues_from_the_stored_watermark(
    world: World, replicas: Replicas
) -> None:
    # No overlap: only the stored watermark reaches back to a sale made during the failover.
    feed = {"order_feed": "200ms", "keycrm": 'order_feed_overlap = "0s"'}
    for name in ("a", "b"):
        await replicas.start(name, **feed)
    await eventually(lambda: in_sync(world), timeout=30)
    leader = await leader_elected(replicas)
    standby = "b" if leader == "a" else "a"
    await eventually(lambda: len(polls(world)) >= 2, timeout=20)
    # A loaded machine may still be starting the standby's process: wait for it to answer.
    await eventually(lambda: _answers(replicas, standby), timeout=20)
    status = await replicas.status(standby)
    assert status is not None and "order_feed" not in str(status.get("source"))  # it polls not
    world.keycrm.scan_gate = anyio.Event()  # the new leader's first scan carries nothing
    try:
        replicas.processes[leader].kill()
        await replicas.processes[leader].wait()
        killed = time.time()
        mark = len(world.keycrm.requests)
        offer = world.keycrm.by_sku("SKU-00007")
        world.keycrm.orders.place([(offer, 4)])  # while nobody leads
        assert await leader_elected(replicas) == standby
        barcode = offer.barcode or ""
        await eventually(
            lambda: world.shops["pos"].quantity(barcode, "S1") == available(world, "SKU-00007"),
            timeout=20,
        )
        first = polls(world, mark)[0]["filter[updated_between]"]
        assert first.split(",")[0] <= keycrm_time(killed)  # from the old leader's watermark
    finally:
        world.keycrm.scan_gate.set()


async def _answers(replicas: Replicas, name: str) -> bool:
    return await replicas.status(name) is not None
