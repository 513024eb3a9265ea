"""Replicas with different configs, end to end: real `stocksync run` processes on one PostgreSQL.

A rolling update that adds a channel: while the old config leads, the new channel gets nothing;
once a replica of the new config runs, it leads (the old leader hands the lease over), the new
channel is synced, and the old replica stands by saying its config differs (`/status`,
`/readyz`, `stocksync_config_mismatch`) without ever taking the lease back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest

from tests.conftest import World, eventually
from tests.integration.test_sync import in_sync
from tests.postgres.test_ha import TTL, Replicas, _is_leader, leader_elected

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


async def get(replicas: Replicas, name: str, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{replicas.ports[name]}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return answer.status, await answer.text()


@pytest.fixture
async def two_shops(world: World, pg_dsn: str) -> AsyncIterator[Replicas]:
    world.keycrm.populate(30)
    await world.add_shop("pos")
    await world.add_shop("web")
    group = Replicas(world, pg_dsn)
    try:
        yield group
    finally:
        with anyio.CancelScope(shield=True):
            await group.stop()


async def test_a_rolling_update_that_adds_a_channel_converges_on_the_new_config(
    world: World, two_shops: Replicas
) -> None:
    replicas = two_shops
    await replicas.start("old", channels=world.shop_table("pos"))
    await eventually(lambda: in_sync(world), timeout=30)
    assert await leader_elected(replicas) == "old"
    assert not world.shops["web"].stock  # not a channel of the old config

    await replicas.start("new", channels=world.shop_table("pos") + world.shop_table("web"))
    await eventually(lambda: _is_leader(replicas, "new"), timeout=20)
    await eventually(lambda: in_sync(world, "web"), timeout=30)

    async def old_differs() -> bool:  # as of its next lease step (a third of the TTL)
        status = await replicas.status("old")
        replica = None if status is None else status["replica"]
        return isinstance(replica, dict) and replica["config"]["differs_from_leader"] is True

    await eventually(old_differs, timeout=10)
    status = await replicas.status("old")
    assert status is not None
    old = status["replica"]
    assert isinstance(old, dict) and old["role"] == "standby"
    assert (old["config"]["generation"], old["config"]["leader_generation"]) == (1, 2)
    assert await get(replicas, "old", "/readyz") == (200, "ready: config differs from leader's\n")
    _, metrics = await get(replicas, "old", "/metrics")
    assert 'stocksync_config_mismatch{merchant="default"} 1.0' in metrics
    status = await replicas.status("new")
    assert status is not None
    new = status["replica"]
    assert isinstance(new, dict) and new["config"]["differs_from_leader"] is False
    _, metrics = await get(replicas, "new", "/metrics")
    assert 'stocksync_config_mismatch{merchant="default"} 0.0' in metrics
    assert await get(replicas, "new", "/readyz") == (200, "ready\n")
    log = (world.tmp_path / "old.log").read_text()
    assert '"lease.yielded"' in log and '"lease.bid_withheld"' in log
    assert await replicas.role("old") == "standby"  # and it never took the lease back
    assert '"lease.acquired"' not in log.split('"lease.yielded"', 1)[1]

    # The last replica of the newer config stops (the end of a rollback): the old one leads at
    # once, without waiting out the newer replica's heartbeat.
    replicas.processes["new"].terminate()
    await replicas.processes["new"].wait()
    stopped_at = anyio.current_time()
    await eventually(lambda: _is_leader(replicas, "old"), timeout=20)
    assert anyio.current_time() - stopped_at < TTL
    _, metrics = await get(replicas, "old", "/metrics")
    assert 'stocksync_config_mismatch{merchant="default"} 0.0' in metrics
