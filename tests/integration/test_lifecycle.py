"""Issue 7's cases over real HTTP: no update lost, no glitch empties a shop.

Each test reproduces one way the old core lost an update or pushed a zero it should have held,
against the fake keyCRM and Inventory Update API, with the real daemon (in process, or as a
`stocksync run` process where a SIGKILL is the point).
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import aiohttp
import anyio
import orjson
import pytest

from daemon.core.errors import LookupQueueFull
from daemon.keycrm.source import Source
from daemon.shell.daemon import Daemon
from tests.conftest import World, eventually, idle, running
from tests.integration.test_guard import blocked, in_stock, scan
from tests.integration.test_restart import run_cli
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def stored(state: Path, channel: str = "pos") -> dict[str, tuple[str, str, str | None]]:
    """key -> (status, desired, acknowledged), read from a running daemon's state file."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT key, status, desired, acked FROM items WHERE channel = ?", (channel,)
        ).fetchall()
    finally:
        db.close()
    return {key: (status, desired, acked) for key, status, desired, acked in rows}


async def post_webhook(port: int, token: str, skus: list[str]) -> int:
    body = orjson.dumps([{"sku": sku, "in_stock": 0, "in_reserve": 0} for sku in skus])
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/webhooks/keycrm/{token}", data=body) as answer,
    ):
        return answer.status


def zero_all(world: World) -> None:
    for offer in world.keycrm.offers.values():
        offer.stock = {1: (0.0, 0.0)}


async def test_a_revert_while_a_push_is_in_flight_survives_a_sigkill(world: World) -> None:
    """Acknowledged 0, restocked to 5, back to 0 while 5 is in flight, then SIGKILL: the
    channel applied 5; only a push of 0 after the restart keeps it from overselling."""
    world.keycrm.populate(1)
    offer = next(iter(world.keycrm.offers.values()))
    offer.stock = {1: (0.0, 0.0)}
    pos = await world.add_shop("pos")
    port = free_port()
    path = world.write_config(listen=f"127.0.0.1:{port}")
    state = world.tmp_path / "state.db"
    upc = offer.barcode or ""
    process = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: pos.quantity(upc, "S1") == 0, timeout=20)
        await eventually(lambda: stored(state).get(f'["{upc}","S1"]', ("",))[0] == "ok")
        pos.answer_gate = anyio.Event()  # applies the next push, then does not answer
        offer.stock = {1: (5.0, 0.0)}
        assert await post_webhook(port, world.webhook_token, [offer.sku or ""]) == 202
        await eventually(lambda: pos.quantity(upc, "S1") == 5)  # applied, answer pending
        offer.stock = {1: (0.0, 0.0)}  # sold elsewhere / corrected in keyCRM meanwhile
        assert await post_webhook(port, world.webhook_token, [offer.sku or ""]) == 202
        await eventually(lambda: stored(state)[f'["{upc}","S1"]'][1] == '{"q":0}')
    finally:
        process.kill()
        await process.wait()
    pos.answer_gate.set()
    pos.answer_gate = None
    restarted = Daemon(world.config(), handle_signals=False)
    async with running(restarted):
        await eventually(lambda: pos.quantity(upc, "S1") == 0 and idle(restarted))


async def test_zeroes_held_by_a_scan_stay_held_for_items_already_queued(world: World) -> None:
    """A resync backlog waits behind a Retry-After pause when a glitched scan zeroes all."""
    world.keycrm.populate(40)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)  # guard_fraction 0.3: 12 of 40
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        assert daemon.parts is not None
        progress = daemon.parts.source.progress
        scans = progress.scans_completed
        pos.faults.add(429, retry_after="3")
        daemon.resync("http")  # every item queued again, and the channel pauses at once
        await eventually(lambda: daemon.parts.dispatchers["pos"].health.paused_until > 0)  # type: ignore[union-attr]
        # The resync's own scan must not see the zeroes: two complete scans would confirm them.
        await eventually(lambda: progress.scans_completed > scans)
        zero_all(world)
        await scan(daemon)
        await eventually(lambda: idle(daemon), timeout=15)
    zeroes = sum(1 for quantity in pos.stock.values() if quantity == 0)
    assert zeroes == 0, f"{zeroes} of 40 items went to 0; the guard holds all of them"


async def test_a_sell_out_found_by_a_webhook_is_never_held(world: World) -> None:
    """Mid-scan, with the scan's guard already holding, a webhook's zero still goes out."""
    world.keycrm.populate(150)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)  # allows 45 of 150
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        assert daemon.parts is not None
        offers = sorted(world.keycrm.offers.values(), key=lambda o: o.id)
        for offer in offers[:50]:
            offer.stock = {1: (0.0, 0.0)}  # page 1: 50 zeroes, 5 past what the guard allows
        world.keycrm.page_delay = {2: 3.0}  # the scan waits on page 2, its guard holding
        daemon.parts.source.request_scan()
        await eventually(lambda: blocked(daemon) == 50)  # the hold begins mid-scan
        assert not any(q == 0 for q in pos.stock.values())
        last = offers[-1]
        last.stock = {1: (0.0, 0.0)}  # a real sell-out on page 3, reported by the webhook
        await daemon.webhook("default", [last.sku or ""])
        await eventually(lambda: pos.quantity(last.barcode or "", "S1") == 0, timeout=2.5)
        assert daemon.parts.source.progress.running  # it went out before the scan ended
    assert sum(1 for q in pos.stock.values() if q == 0) == 1


@pytest.mark.parametrize(
    ("lie", "reason"),
    [
        ("last_page_1", "total_mismatch"),
        ("short_page_2", "short_page"),
        ("total_drift", "total_changed"),
    ],
)
async def test_a_lying_paginator_vanishes_nothing(world: World, lie: str, reason: str) -> None:
    world.keycrm.populate(120)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        assert daemon.parts is not None
        world.keycrm.paging_lie = lie
        registry = daemon.metrics.registry

        def incomplete() -> float:
            value = registry.get_sample_value(
                "stocksync_keycrm_incomplete_scans_total", {"merchant": "default", "reason": reason}
            )
            return value or 0.0

        for attempt in (1, 2, 3):  # three scans: the old core zeroed after the second
            daemon.parts.source.request_scan()
            await eventually(lambda n=attempt: incomplete() >= n)  # type: ignore[misc]
        await eventually(lambda: idle(daemon))
        status = await daemon.status()
    assert set(pos.stock.values()) == {5}
    assert "incomplete scan" in (status["source"]["last_error"] or "")


async def test_one_bad_sku_costs_only_itself(world: World) -> None:
    """A SKU too long for keyCRM, and one keyCRM refuses with 400, beside real changes."""
    world.keycrm.populate(60)
    in_stock(world)
    pos = await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        offers = sorted(world.keycrm.offers.values(), key=lambda o: o.id)
        for offer in offers:
            offer.stock = {1: (2.0, 0.0)}
        world.keycrm.refuse_skus = {offers[7].sku or ""}
        await daemon.webhook("default", ["X" * 10_000, *[o.sku or "" for o in offers]])
        expected = {(o.barcode, "S1") for o in offers if o is not offers[7]}
        await eventually(lambda: all(pos.stock[key] == 2 for key in expected))
        assert pos.stock[(offers[7].barcode or "", "S1")] == 5  # left to the next scan
    registry = daemon.metrics.registry
    for reason in ("bad_sku", "refused"):
        value = registry.get_sample_value(
            "stocksync_lookups_dropped_total", {"merchant": "default", "reason": reason}
        )
        assert value == 1, reason
    lookups = [q for _, _, q in world.keycrm.requests if "filter[offers_sku]" in q]
    assert all(len(q["filter[offers_sku]"]) <= 2000 for q in lookups)


async def test_look_ups_are_first_in_first_out_and_bounded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.keycrm.populate(300)
    await world.add_shop("pos")
    monkeypatch.setattr("daemon.keycrm.lookups.LOOKUP_QUEUE_CAP", 260)
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        assert daemon.parts is not None
        source: Source = daemon.parts.source
        world.keycrm.faults.gate = anyio.Event()  # hold keyCRM while the queue fills
        asked = len(world.keycrm.requests)
        newest_first = [f"SKU-{n:05d}" for n in range(300, 0, -1)]
        with pytest.raises(LookupQueueFull):  # 40 did not fit: the sender is told (503)
            await daemon.webhook("default", newest_first)
        await eventually(lambda: len(world.keycrm.requests) > asked)
        world.keycrm.faults.gate.set()
        world.keycrm.faults.gate = None
        await eventually(lambda: source.lookups_queued == 0)

        def lookups() -> list[list[str]]:
            found = world.keycrm.requests[asked:]
            return [q["filter[offers_sku]"].split(",") for _, _, q in found]

        await eventually(lambda: sum(len(batch) for batch in lookups()) >= 260)
        await anyio.sleep(0.1)  # nothing more may follow
    asked_for = lookups()
    assert asked_for[0] == newest_first[:50]  # in the order they came, not sorted
    looked_up = [sku for batch in asked_for for sku in batch]
    assert looked_up == newest_first[:260]
    overflow = daemon.metrics.registry.get_sample_value(
        "stocksync_lookups_dropped_total", {"merchant": "default", "reason": "overflow"}
    )
    assert overflow == 40
