"""The daemon's HTTP listener: webhook, admin routes, health, readiness, status, metrics."""

from __future__ import annotations

import io
import os
import shutil
import time

import aiohttp
import anyio
import orjson
import pytest
import structlog
from aiohttp import web

from daemon.core.telemetry import PUSH_OUTCOMES
from daemon.shell.daemon import Daemon
from daemon.simulator import FakeKeycrm
from tests.conftest import Serve, World, eventually, idle, running
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


@pytest.fixture
async def synced(world: World) -> World:
    world.keycrm.populate(10)
    await world.add_shop("pos")
    return world


def base(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.bound_port}"


async def test_webhook_tokens_bodies_and_what_they_change(synced: World) -> None:
    world = synced
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        await eventually(lambda: in_sync(world))
        lookups = len(world.keycrm.requests)
        hook = f"{base(daemon)}/webhooks/keycrm/{world.webhook_token}"
        async with session.post(f"{base(daemon)}/webhooks/keycrm/wrong", json=[{"sku": "x"}]) as r:
            assert r.status == 404
        for bad in (
            b"not json",
            b"[]",
            b'[{"offer_id": 1}]',
            b'[{"sku": "A", "in_stock": "many"}]',
        ):
            async with session.post(hook, data=bad) as r:
                assert r.status == 400
                assert "error" in await r.json()
        huge = io.BytesIO(b"[" + b'{"sku": "A"},' * 200_000 + b'{"sku": "A"}]')
        async with session.post(hook, data=huge) as r:
            assert r.status == 400
        assert len(world.keycrm.requests) == lookups  # nothing was looked up
        rejected = daemon.metrics.registry.get_sample_value(
            "stocksync_webhook_events_total", {"outcome": "rejected"}
        )
        assert rejected == 6  # the unknown token counts too (StocksyncWebhooksRejected)


async def test_admin_resync_needs_the_bearer_token_and_pushes_everything_again(
    synced: World,
) -> None:
    world = synced
    daemon = Daemon(world.config(), handle_signals=False)
    with structlog.testing.capture_logs() as logs:
        async with running(daemon), aiohttp.ClientSession() as session:
            await _resync_over_http(world, daemon, session)
    # The rules did not change since the start planned every record: the stored values went
    # out again as they were, with no second plan of every record.
    started = [e for e in logs if e["event"] == "resync.started"]
    assert [(e["items"], e["replanned"]) for e in started] == [(10, None)]
    assert [e["event"] for e in logs].count("plan.replanning") == 1  # the start's own
    assert (
        daemon.metrics.registry.get_sample_value(
            "stocksync_resyncs_total", {"merchant": "default", "trigger": "http"}
        )
        == 1
    )


async def _resync_over_http(world: World, daemon: Daemon, session: aiohttp.ClientSession) -> None:
    pos = world.shops["pos"]
    await eventually(lambda: in_sync(world))
    await eventually(lambda: len(pos.requests) >= 10 and idle(daemon))
    assert len(pos.requests) == 10
    url = f"{base(daemon)}/admin/resync"
    async with session.post(url) as r:
        assert r.status == 401
    async with session.post(url, headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
    async with session.post(url, headers={"Authorization": f"Bearer {world.admin_token}"}) as r:
        assert r.status == 202
    await eventually(lambda: len(pos.requests) >= 20 and idle(daemon))
    assert len(pos.requests) == 20


async def test_admin_guard_release_needs_the_token_and_a_channel_it_knows(synced: World) -> None:
    world = synced
    daemon = Daemon(world.config(), handle_signals=False)
    admin = {"Authorization": f"Bearer {world.admin_token}"}
    async with running(daemon), aiohttp.ClientSession() as session:
        await eventually(lambda: in_sync(world) and idle(daemon))
        url = f"{base(daemon)}/admin/guard/release"
        async with session.post(url, headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with session.post(url + "?chanel=pos", headers=admin) as r:
            assert r.status == 400  # a misspelt parameter must not release every channel
        async with session.post(url + "?channel=nope", headers=admin) as r:
            assert r.status == 404
        async with session.post(url + "?channel=pos", headers=admin) as r:
            assert (r.status, await r.json()) == (200, {"released": {}, "items": 0})


def keycrm(daemon: Daemon, gauge: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        f"stocksync_keycrm_{gauge}", {"merchant": "default"}
    )
    assert value is not None
    return value


async def test_health_readiness_and_status(synced: World) -> None:
    world = synced
    world.keycrm.faults.add(503, times=100)  # keyCRM down at start
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        async with session.get(f"{base(daemon)}/healthz") as r:
            assert r.status == 200
        async with session.get(f"{base(daemon)}/readyz") as r:
            assert r.status == 503
            assert "keyCRM has not answered" in await r.text()
        await eventually(lambda: keycrm(daemon, "up") == 0)  # StocksyncKeycrmDown's gauge
        started = keycrm(daemon, "last_success_timestamp_seconds")
        world.keycrm.faults.clear()
        assert daemon.parts is not None
        daemon.parts.source.request_scan()
        await eventually(lambda: in_sync(world))
        await eventually(
            lambda: daemon.parts is not None and daemon.parts.source.progress.scans_completed == 1
        )
        await eventually(lambda: idle(daemon))
        async with session.get(f"{base(daemon)}/readyz") as r:
            assert r.status == 200
        async with session.get(f"{base(daemon)}/status") as r:
            status = await r.json()
        assert keycrm(daemon, "up") == 1
        assert keycrm(daemon, "last_success_timestamp_seconds") > started
    assert status["ready"] is True
    assert status["channels"]["pos"]["pending"] == 0
    assert status["source"]["budget_requests_per_minute"] == 6000


async def test_metrics_export_every_family_with_a_series_per_channel(synced: World) -> None:
    world = synced
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        await eventually(lambda: in_sync(world))
        async with session.get(f"{base(daemon)}/metrics") as r:
            assert r.status == 200
            assert r.content_type == "text/plain"
            text = await r.text()
    for family in (
        'stocksync_sync_lag_seconds{channel="pos",merchant="default"}',
        'stocksync_propagation_seconds_bucket{channel="pos",le="0.5",merchant="default"}',
        'stocksync_pending_items{channel="pos",merchant="default"}',
        'stocksync_rejected_items{channel="pos",merchant="default"}',
        'stocksync_channel_up{channel="pos",merchant="default"} 1.0',
        'stocksync_push_request_duration_seconds_count{channel="pos",merchant="default"}',
        'stocksync_keycrm_requests_total{kind="scan",merchant="default",status="200"}',
        'stocksync_keycrm_last_scan_success_timestamp_seconds{merchant="default"} ',
        'stocksync_keycrm_scan_duration_seconds{merchant="default"} ',
        'stocksync_skus_tracked{merchant="default"} 10.0',
        'stocksync_webhook_events_total{outcome="accepted"}',
        'stocksync_resyncs_total{merchant="default",trigger="signal"}',
        'stocksync_config_reloads_total{result="error"}',
        'stocksync_guard_blocked_total{channel="pos",merchant="default"}',
        "stocksync_build_info{version=",
        'stocksync_merchants{role="leading"} 1.0',
    ):
        assert family in text, family
    for outcome in PUSH_OUTCOMES:
        line = (
            f'stocksync_push_requests_total{{channel="pos",merchant="default",outcome="{outcome}"}}'
        )
        assert line in text
    assert "SKU-0" not in text  # never a SKU label


async def test_no_secret_reaches_logs_errors_or_status(
    synced: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.config.settings import secret_values
    from daemon.shell.logs import configure_logging

    world = synced
    pos = world.shops["pos"]
    config = world.config()
    configure_logging(fmt="json", level="debug", secrets=secret_values(config))
    # A channel that echoes the credentials it was sent back in its error body.
    pos.faults.add(500, body=f'{{"error": "bad token Bearer {pos.token}"}}'.encode(), times=3)
    daemon = Daemon(config, handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        await eventually(lambda: in_sync(world))
        async with session.post(
            f"{base(daemon)}/webhooks/keycrm/{world.webhook_token}", json=[{"sku": "SKU-00001"}]
        ) as r:
            assert r.status == 202
        async with session.get(f"{base(daemon)}/status") as r:
            status = await r.text()
    logs = capsys.readouterr()
    lines = [
        orjson.loads(line) for line in (logs.out + logs.err).splitlines() if line.startswith("{")
    ]
    retry = next(line for line in lines if line["event"] == "channel.push_retry")
    assert retry["channel"] == "pos"
    assert retry["sku"].startswith("SKU-")
    assert retry["attempt"] == 1
    assert retry["status"] == 500
    assert retry["level"] == "warning"
    assert retry["timestamp"].endswith("Z")
    for secret in world.secrets:
        assert secret not in status
        assert secret not in logs.out
        assert secret not in logs.err


def tool(name: str) -> str:
    """The path of a checker CI installs; outside CI a missing one skips the test."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} is not installed")
    return path


async def test_the_exposition_passes_promtool(synced: World) -> None:
    promtool = tool("promtool")
    world = synced
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        await eventually(lambda: in_sync(world))
        async with session.get(f"{base(daemon)}/metrics") as r:
            text = await r.read()
    result = await anyio.run_process([promtool, "check", "metrics"], input=text, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def test_readiness_fails_when_keycrm_has_not_answered_for_several_polls(
    synced: World,
) -> None:
    world = synced
    offset = [0.0]
    daemon = Daemon(world.config(), handle_signals=False, clock=lambda: time.time() + offset[0])
    async with running(daemon):
        await eventually(lambda: in_sync(world))
        assert await daemon.readiness() is None
        offset[0] = 4 * 3600  # poll_interval is 1h: keyCRM silent for three polls and more
        reason = await daemon.readiness()
    assert reason is not None
    assert "keyCRM has not answered" in reason


async def test_a_scheduled_resync_pushes_everything_again(synced: World) -> None:
    world = synced
    pos = world.shops["pos"]
    config = world.config(sync='debounce = "0s"\nmax_delay = "1s"\nresync_interval = "300ms"')
    daemon = Daemon(config, handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(pos.requests) >= 20)
    scheduled = daemon.metrics.registry.get_sample_value(
        "stocksync_resyncs_total", {"merchant": "default", "trigger": "schedule"}
    )
    assert scheduled is not None
    assert scheduled >= 1


async def test_ready_during_a_cold_start_with_the_first_scan_in_status(
    world: World, serve: Serve
) -> None:
    """Ready once keyCRM answered: webhooks flow while a long first scan runs."""
    keycrm = FakeKeycrm(world.keycrm_key)
    keycrm.populate(120)  # three pages
    release = anyio.Event()
    original = keycrm.stocks

    async def slow_after_the_first_page(request: web.Request) -> web.Response:
        if request.query.get("page", "1") != "1" and "filter[offers_sku]" not in request.query:
            await release.wait()
        return await original(request)

    keycrm.stocks = slow_after_the_first_page  # type: ignore[method-assign]
    world.keycrm = keycrm
    world.urls["keycrm"] = await serve(keycrm.app())
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon), aiohttp.ClientSession() as session:
        progress = daemon.parts.source.progress  # type: ignore[union-attr]
        await eventually(lambda: progress.running and progress.page == 1)
        async with session.get(f"{base(daemon)}/readyz") as r:
            assert r.status == 200
        async with session.get(f"{base(daemon)}/status") as r:
            source = (await r.json())["source"]
        assert source["first_scan_done"] is False
        assert (source["scan_running"], source["scan_page"], source["scan_last_page"]) == (
            True,
            1,
            3,
        )
        assert source["scan_eta"] is not None
        assert source["catalog_running"] is False and source["catalog_last_page"] == 3
        async with session.get(f"{base(daemon)}/metrics") as r:
            assert 'stocksync_keycrm_first_scan_done{merchant="default"} 0.0' in await r.text()
        release.set()
        await eventually(lambda: progress.scans_completed == 1)
        async with session.get(f"{base(daemon)}/metrics") as r:
            assert 'stocksync_keycrm_first_scan_done{merchant="default"} 1.0' in await r.text()
        async with session.get(f"{base(daemon)}/status") as r:
            assert (await r.json())["source"]["first_scan_done"] is True
