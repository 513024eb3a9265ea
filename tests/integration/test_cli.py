"""The `stocksync` command as a person runs it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio


async def test_demo_runs_the_daemon_against_all_four_simulated_channels(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    command = [sys.executable, "-m", "daemon", "demo", "--duration", "4", "--port", "0"]
    result = await anyio.run_process(
        [*command, "--skus", "12", "--state-dir", str(folder)], check=False
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err
    assert "stocksync demo: 12 SKUs" in out
    assert "curl -s http://127.0.0.1:" in out
    log = (folder / "demo.log").read_text(encoding="utf-8")  # its log goes there, not on screen
    for event in (
        "demo.pos_updated",
        "demo.klump_updated",
        "demo.marketplacer_updated",
        "demo.ordergroove_updated",
    ):
        assert event in log, event
    assert "daemon.stopped" in log
    assert "Traceback" not in err + log


async def test_version_and_usage() -> None:
    version = await anyio.run_process([sys.executable, "-m", "daemon", "--version"])
    assert version.stdout.decode().startswith("stocksync ")
    usage = await anyio.run_process([sys.executable, "-m", "daemon"], check=False)
    assert usage.returncode == 2
    assert "run" in usage.stderr.decode() and "check-config" in usage.stderr.decode()


async def test_the_demos_drift_hint_works_from_another_shell() -> None:
    command = [sys.executable, "-m", "daemon", "demo", "--duration", "60", "--port", "0"]
    async with await anyio.open_process([*command, "--skus", "6"]) as demo:
        assert demo.stdout is not None
        seen = ""
        with anyio.fail_after(20):
            async for chunk in demo.stdout:
                seen += chunk.decode()
                if "prometheus --config.file" in seen and seen.endswith("\n"):
                    break
        lines = [line.strip() for line in seen.splitlines()]
        exports = [line for line in lines if line.startswith("export ")]
        hint = next(line for line in lines if line.endswith(" drift)"))
        await anyio.sleep(1.5)  # let the first scan reach the channels
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC")}
        script = "\n".join([*exports, hint])
        result = await anyio.run_process(["sh", "-c", script], check=False, env=env)
        demo.terminate()
    out = result.stdout.decode()
    assert result.returncode in (0, 1), result.stderr.decode()
    assert "marketplacer: " in out and "ordergroove: " in out, out
    assert "shop-pos, klump: no read-back" in out, out
