"""`once`'s progress: a bar with counts on a terminal, a line now and then otherwise."""

from __future__ import annotations

import io
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry

from daemon.commands.once_report import progress_reporter
from daemon.core.telemetry import Metrics
from daemon.keycrm.source import ScanProgress
from daemon.store import SQLiteStore

pytestmark = pytest.mark.anyio


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_a_terminal_gets_a_bar_with_counts(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", ["pos"])
    scan = ScanProgress(running=True, page=12, last_page=40)
    for _ in range(3):
        metrics.propagation.labels(channel="pos").observe(1.0)
    screen = Terminal()
    try:
        async with progress_reporter(scan, store, metrics, ["pos"], stream=screen):
            await anyio.sleep(0.5)
    finally:
        await store.close()
    text = screen.getvalue()
    assert "keyCRM scan" in text and "12/40" in text
    assert "pushes" in text and "3/3" in text


async def test_a_pipe_gets_a_line_now_and_then(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", ["pos"])
    scan = ScanProgress(running=True, page=2, last_page=9)
    log = io.StringIO()
    try:
        async with progress_reporter(scan, store, metrics, ["pos"], stream=log, every=0.05):
            await anyio.sleep(0.3)
    finally:
        await store.close()
    lines = log.getvalue().splitlines()
    assert len(lines) >= 2
    assert lines[0].startswith("once: scan page 2/9; 0 pushed, 0 pending (")
