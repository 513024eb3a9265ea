"""The `stocksync` command as a person runs it."""

from __future__ import annotations

import sys

import anyio
import pytest

pytestmark = pytest.mark.anyio


async def test_demo_runs_the_daemon_against_all_four_simulated_channels() -> None:
    result = await anyio.run_process(
        [sys.executable, "-m", "daemon", "demo", "--duration", "4", "--port", "0", "--skus", "12"],
        check=False,
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err
    assert "stocksync demo: 12 SKUs" in out
    assert "curl -s http://127.0.0.1:" in out
    for event in (
        "demo.pos_updated",
        "demo.klump_updated",
        "demo.marketplacer_updated",
        "demo.ordergroove_updated",
    ):
        assert event in out + err, event
    assert "daemon.stopped" in out + err
    assert "Traceback" not in err


async def test_version_and_usage() -> None:
    version = await anyio.run_process([sys.executable, "-m", "daemon", "--version"])
    assert version.stdout.decode().startswith("stocksync ")
    usage = await anyio.run_process([sys.executable, "-m", "daemon"], check=False)
    assert usage.returncode == 2
    assert "run" in usage.stderr.decode() and "check-config" in usage.stderr.decode()
