"""The daemon shell survives its environment: signals at the wrong moment, a reload onto a taken
port, restarts that would overspend keyCRM, a second copy, a damaged state file."""

from __future__ import annotations

import signal
import socket
import sys
import time

import aiohttp
import anyio
import pytest
import structlog

from adapters import ADAPTERS
from daemon.config.settings import load_config
from daemon.shell.daemon import Daemon
from tests.conftest import World, eventually, idle, running
from tests.integration.test_lifecycle import free_port
from tests.integration.test_restart import run_cli
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


async def test_signals_during_a_reload_and_its_drain_are_queued_not_fatal(world: World) -> None:
    world.keycrm.populate(30)
    pos = await world.add_shop("pos")
    pos.faults.delay = 0.3  # pushes in flight while the reload drains
    path = world.write_config()
    process = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: pos.in_flight > 0, timeout=20)
        process.send_signal(signal.SIGHUP)  # reload: the old pipeline drains...
        for _ in range(3):  # ...while more signals arrive
            process.send_signal(signal.SIGHUP)
            process.send_signal(signal.SIGUSR1)
        await anyio.sleep(0.5)
        assert process.returncode is None, "a signal during the drain killed the daemon"
        await eventually(lambda: in_sync(world), timeout=20)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_reload_onto_a_taken_port_keeps_the_running_config(world: World) -> None:
    world.keycrm.populate(3)
    await world.add_shop("pos")
    port = free_port()
    first = world.config(listen=f"127.0.0.1:{port}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        files = [world.write_config(listen=f"127.0.0.1:{busy}")]
        daemon = Daemon(first, reload=lambda: load_config(files[0], ADAPTERS), handle_signals=False)
        registry = daemon.metrics.registry
        async with running(daemon):
            await eventually(lambda: in_sync(world))
            await daemon.reload()
            assert daemon.config is first
            assert daemon.bound_port == port
            errors = registry.get_sample_value(
                "stocksync_config_reloads_total", {"result": "error"}
            )
            assert errors == 1
            # StocksyncConfigReloadFailed holds until a reload applies.
            assert registry.get_sample_value("stocksync_config_last_reload_successful") == 0
            files[0] = world.write_config(listen=f"127.0.0.1:{port}")
            await daemon.reload()
            assert registry.get_sample_value("stocksync_config_last_reload_successful") == 1
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz") as answer,
            ):
                assert answer.status == 200


async def test_a_reload_onto_a_new_port_serves_there(world: World) -> None:
    world.keycrm.populate(3)
    await world.add_shop("pos")
    old, new = free_port(), free_port()
    first = world.config(listen=f"127.0.0.1:{old}")
    second = world.write_config(listen=f"127.0.0.1:{new}")
    daemon = Daemon(first, reload=lambda: load_config(second, ADAPTERS), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world))
        await daemon.reload()
        await eventually(lambda: daemon.config is not first)
        assert daemon.bound_port == new
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{new}/healthz") as answer:
                assert answer.status == 200
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"http://127.0.0.1:{old}/healthz")


async def test_reloads_and_restarts_never_overspend_keycrm(world: World) -> None:
    """A SIGHUP storm and quick restarts: keyCRM (5 requests a minute here) refuses none."""
    world.keycrm.populate(10)
    world.keycrm.limit, world.keycrm.window = 5, 60.0
    await world.add_shop("pos")
    path = world.write_config(keycrm="")
    path.write_text(
        path.read_text().replace("requests_per_minute = 6000", "requests_per_minute = 5")
    )
    config = load_config(path, ADAPTERS)
    daemon = Daemon(config, reload=lambda: load_config(path, ADAPTERS), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: len(world.keycrm.requests) > 0)
        for _ in range(8):
            await daemon.reload()
            await eventually(daemon.started.is_set)
            await anyio.sleep(0.05)
    for _ in range(3):
        restarted = Daemon(load_config(path, ADAPTERS), handle_signals=False)
        async with running(restarted):
            await anyio.sleep(0.3)
    assert world.keycrm.refused == 0
    assert len(world.keycrm.requests) <= 5


async def test_a_429_pause_outlives_a_restart(world: World) -> None:
    world.keycrm.populate(3)
    await world.add_shop("pos")
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world) and idle(daemon))
        world.keycrm.faults.add(429, retry_after="30")
        assert daemon.parts is not None
        daemon.parts.source.request_scan()
        await eventually(lambda: world.keycrm.faults.queued == 0)
    asked = len(world.keycrm.requests)
    restarted = Daemon(world.config(), handle_signals=False)
    async with running(restarted):
        await anyio.sleep(0.5)
    assert len(world.keycrm.requests) == asked, "the restart ignored keyCRM's Retry-After"


async def test_a_second_daemon_on_the_same_state_exits_at_once(world: World) -> None:
    world.keycrm.populate(3)
    pos = await world.add_shop("pos")
    path = world.write_config()
    first = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: len(pos.stock) == 3, timeout=20)
        started = time.monotonic()
        second = await anyio.run_process(
            [sys.executable, "-m", "daemon", "run", "-c", str(path)], check=False
        )
        assert time.monotonic() - started < 10
        assert second.returncode == 2
        err = second.stderr.decode()
        assert f"pid {first.pid}" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        once = await anyio.run_process(
            [sys.executable, "-m", "daemon", "once", "-c", str(path)], check=False
        )
        assert once.returncode == 2
        dry = await anyio.run_process(
            [sys.executable, "-m", "daemon", "once", "--dry-run", "-c", str(path)], check=False
        )
        assert dry.returncode == 0, dry.stderr.decode()
        history = await anyio.run_process(
            [sys.executable, "-m", "daemon", "history", "-c", str(path), "SKU-00001"], check=False
        )
        assert history.returncode == 0, history.stderr.decode()
    finally:
        first.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            await first.wait()


@pytest.mark.parametrize(
    "content", [b"this is not a database at all" * 40, b"SQLite format 3\x00" + b"\xff" * 4000]
)
async def test_a_damaged_state_file_is_one_clear_line(world: World, content: bytes) -> None:
    world.keycrm.populate(1)
    await world.add_shop("pos")
    path = world.write_config()
    (world.tmp_path / "state.db").write_bytes(content)
    result = await anyio.run_process(
        [sys.executable, "-m", "daemon", "run", "-c", str(path)], check=False
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "state.db" in line]
    # The preflight's line (a foreign header) or the store's (a damaged database): either way one.
    assert len(lines) == 1 and "move it a" in lines[0].lower()


async def test_a_restart_plans_again_only_when_the_rules_changed(world: World) -> None:
    world.keycrm.populate(5)
    pos = await world.add_shop("pos")
    for attempt, (store_code, replans) in enumerate([("S1", 1), ("S1", 0), ("S2", 1)]):
        config = world.config(channels=world.shop_table("pos", f'store = "{store_code}"'))
        daemon = Daemon(config, handle_signals=False)
        with structlog.testing.capture_logs() as logs:
            async with running(daemon):
                await eventually(lambda code=store_code: in_sync(world, store=code))  # type: ignore[misc]
                await eventually(lambda running_now=daemon: idle(running_now))  # type: ignore[misc]
        events = [e["event"] for e in logs]
        assert events.count("plan.replanning") == replans, attempt
    assert {store for _, store in pos.stock} == {"S1", "S2"}
