"""Many SQLite stores in one process (one per merchant) share two process-wide limits, so a
resync of every merchant at once holds a few pages of rows, not one per merchant, and their
page caches do not add up to 2 MiB each."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import pytest

from daemon.store import SQLiteStore
from daemon.store.sqlite.base import RUNNING, SQLITE_HEAP

pytestmark = pytest.mark.anyio


async def test_calls_of_every_store_run_a_few_at_a_time(tmp_path: Path) -> None:
    stores = [SQLiteStore(tmp_path / f"m{n}.db") for n in range(RUNNING * 2)]
    lock = threading.Lock()
    running, most = 0, 0

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    try:
        async with anyio.create_task_group() as calls:
            for store in stores:
                calls.start_soon(store._run, job)
        assert most == RUNNING
        heap = stores[0]._db.execute("PRAGMA soft_heap_limit").fetchone()[0]
        assert heap == SQLITE_HEAP
    finally:
        for store in stores:
            await store.close()
