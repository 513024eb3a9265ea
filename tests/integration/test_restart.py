"""Stopping the daemon mid-push, gracefully or not, and starting it again loses nothing."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time

import anyio
import pytest

from daemon.shell.daemon import Daemon
from daemon.store import SQLiteStore
from tests.conftest import World, eventually, idle, running
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


async def test_a_crash_mid_push_loses_nothing(world: World) -> None:
    world.keycrm.populate(40)
    pos = await world.add_shop("pos")
    pos.faults.gate = anyio.Event()  # requests hang until the gate opens
    path = world.write_config()
    started = time.time()
    crashed = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: pos.in_flight >= 8, timeout=20)
    finally:
        crashed.kill()  # SIGKILL mid-push: no drain, no settle
        await crashed.wait()
    assert pos.stock == {}
    # After the restart, before anything lands, the lag counts from the first divergence,
    # not from the restart.
    await anyio.sleep(0.3)
    restarted = Daemon(world.config(), handle_signals=False)
    async with running(restarted):
        await eventually(lambda: restarted.parts is not None)
        await restarted.refresh_metrics()
        lag = restarted.metrics.registry.get_sample_value(
            "stocksync_sync_lag_seconds", {"merchant": "default", "channel": "pos"}
        )
        assert lag is not None
        assert 0.3 <= lag <= time.time() - started
        pos.faults.gate.set()  # the answers to the killed process's requests are lost with it
        await eventually(lambda: in_sync(world))
        await eventually(lambda: idle(restarted))
        assert (await restarted.status())["channels"]["pos"]["pending"] == 0
    await eventually(lambda: pos.in_flight == 0)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> anyio.abc.Process:
    """A command in the background; its output goes to a temporary file, never to a pipe that
    nobody reads (a full pipe stalls the daemon writing its log)."""
    with tempfile.TemporaryFile() as sink:
        return await anyio.open_process(
            [sys.executable, "-m", "daemon", *args],
            env={**os.environ, **(env or {})},
            stdout=sink,
            stderr=sink,
        )


async def test_sigterm_mid_push_finishes_in_flight_requests_then_once_completes(
    world: World,
) -> None:
    world.keycrm.populate(30)
    pos = await world.add_shop("pos")
    pos.faults.delay = 0.2  # slow enough that SIGTERM lands mid-push
    path = world.write_config()
    process = await run_cli("run", "-c", str(path))
    try:
        await eventually(lambda: len(pos.stock) >= 8, timeout=20)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert code == 0
    assert pos.in_flight == 0
    pos.faults.delay = 0
    done = await run_cli("once", "-c", str(path))
    with anyio.fail_after(20):
        assert await done.wait() == 0
    assert in_sync(world)
    # In-flight requests finished and were recorded before exit: `once` pushed only what was
    # left, so every item went out exactly once over both runs.
    assert len(pos.requests) == 30
    assert pos.arrivals == 30  # none cut off mid-flight and sent again


async def test_once_dry_run_prints_the_plan_and_sends_nothing(world: World) -> None:
    world.keycrm.populate(3)
    pos = await world.add_shop("pos")
    path = world.write_config()
    result = await anyio.run_process(
        [sys.executable, "-m", "daemon", "once", "--dry-run", "-c", str(path)], check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == [
        f'pos\t["40000000000{i}","S1"]\tqty={n}\t(now: unknown)'
        for i, n in (
            (o.id - 1000, max(0, int(o.quantity - o.reserve))) for o in world.keycrm.offers.values()
        )
    ]
    assert lines[3] == "# pos: 3 to push"
    assert pos.requests == []
    assert not (world.tmp_path / "state.db").exists()

    # After a resync (a reload asks for one) every item is pending, changed or not: the
    # unchanged ones are counted, not listed as "qty=2 (now: qty=2)".
    done = await anyio.run_process([sys.executable, "-m", "daemon", "once", "-c", str(path)])
    assert done.returncode == 0
    store = SQLiteStore(world.tmp_path / "state.db")
    assert await store.force_all(time.time()) == 3
    await store.close()
    result = await anyio.run_process(
        [sys.executable, "-m", "daemon", "once", "--dry-run", "-c", str(path)], check=False
    )
    assert result.stdout.decode().splitlines() == [
        "# pos: 0 to push; 3 unchanged pushed again (a resync asked for every item)"
    ]


async def test_once_exits_1_when_an_item_is_rejected(world: World) -> None:
    world.keycrm.populate(4)
    pos = await world.add_shop("pos")
    pos.known = {"400000000001", "400000000002", "400000000003"}
    path = world.write_config()
    result = await anyio.run_process(
        [sys.executable, "-m", "daemon", "once", "-c", str(path)], check=False
    )
    assert result.returncode == 1
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "pos: 3 pushed this run; 3 acknowledged, 0 pending, 1 rejected"
    assert lines[1].startswith('  rejected ["400000000004","S1"]: pos: HTTP 4')


async def test_once_says_what_it_did_and_a_second_run_pushed_nothing(world: World) -> None:
    world.keycrm.populate(6)
    await world.add_shop("pos")
    broken = await world.add_shop("web")  # refuses every request: items stay pending
    broken.faults.add(503, times=1000)
    path = world.write_config()
    command = [sys.executable, "-m", "daemon", "once", "-c", str(path), "--timeout", "2"]
    first = await anyio.run_process([*command, "--progress-every", "0.2"], check=False)
    assert first.returncode == 1
    out = first.stdout.decode().splitlines()
    assert out[0] == "pos: 6 pushed this run; 6 acknowledged, 0 pending, 0 rejected"
    assert out[1].startswith("web: 0 pushed this run; 0 acknowledged, 6 pending (last error: ")
    assert "web: HTTP 503" in out[1]
    progress = [line for line in first.stderr.decode().splitlines() if line.startswith("once: ")]
    assert progress, first.stderr.decode()
    assert "pushed" in progress[-1] and "pending" in progress[-1]
    assert "once stopped waiting: --timeout 2s reached" in first.stderr.decode()

    # nothing to do: says so, rather than counting what earlier runs acknowledged
    world.write_config(channels=world.shop_table("pos"))
    second = await anyio.run_process(command, check=False)
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout.decode().splitlines() == [
        "pos: 0 pushed this run; 6 acknowledged, 0 pending, 0 rejected"
    ]
