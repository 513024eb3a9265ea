"""A webhook answered 2xx survives a SIGKILL of the real daemon (SQLite state).

The scan is held for the whole test, so only the webhook's look-up can carry the change: if
the SKU lived only in the killed process's memory, the channel would wait for the next scan.
"""

from __future__ import annotations

import sqlite3
import time

import aiohttp
import anyio
import orjson
import pytest

from daemon.keycrm import lookups
from daemon.shell import daemon as pipeline
from daemon.shell.daemon import Daemon
from tests.conftest import World, eventually, running
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


async def post(port: int, token: str, skus: list[str]) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps([{"sku": sku, "in_stock": 0} for sku in skus])
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/webhooks/keycrm/{token}", data=body) as answer,
    ):
        return answer.status, dict(answer.headers), await answer.read()


async def test_a_webhook_whose_skus_do_not_all_fit_in_the_queue_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lookups, "LOOKUP_QUEUE_CAP", 5)
    world.keycrm.populate(10)
    await world.add_shop("pos")
    world.keycrm.lookup_gate = anyio.Event()  # the queue does not drain meanwhile
    port = free_port()
    daemon = Daemon(world.config(listen=f"127.0.0.1:{port}"), handle_signals=False)
    skus = [o.sku or "" for o in world.keycrm.offers.values()]
    try:
        async with running(daemon):
            status, _, _ = await post(port, world.webhook_token, skus[:3])
            assert status == 202
            status, headers, body = await post(port, world.webhook_token, skus[3:8])
            assert status == 503  # a 202 would promise SKUs that were dropped
            assert headers["Retry-After"] == "5"
            assert orjson.loads(body)["dropped"] == 3
            dropped = daemon.metrics.registry.get_sample_value(
                "stocksync_lookups_dropped_total", {"merchant": "default", "reason": "overflow"}
            )
            assert dropped == 3
            assert daemon.lookups is not None and len(daemon.lookups) == 5  # those that fit
    finally:
        world.keycrm.lookup_gate.set()


async def test_a_locked_state_file_gets_a_prompt_503_and_then_a_202(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "WEBHOOK_STORE_WAIT", 0.5)
    world.keycrm.populate(3)
    await world.add_shop("pos")
    port = free_port()
    daemon = Daemon(world.config(listen=f"127.0.0.1:{port}"), handle_signals=False)
    sku = next(iter(world.keycrm.offers.values())).sku or ""
    async with running(daemon):
        await eventually(lambda: in_sync(world))
        other = sqlite3.connect(world.tmp_path / "state.db", isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # another program holds the file
            started = time.monotonic()
            status, headers, _ = await post(port, world.webhook_token, [sku])
            assert status == 503
            assert headers["Retry-After"] == "5"
            assert time.monotonic() - started < 3  # not the 5 s busy timeout, nor twice it
        finally:
            other.execute("ROLLBACK")
            other.close()
        await eventually(lambda: daemon.store is not None and daemon.store.health.reason is None)
        status, _, _ = await post(port, world.webhook_token, [sku])
        assert status == 202
