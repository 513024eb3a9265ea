"""A store that cannot write is a state the daemon shows, not a crash, and it recovers by itself.

One test fills a real, size-limited tmpfs under the state file (root can mount one; elsewhere it
is skipped with the reason); the other injects SQLite's own "disk is full" error and runs
everywhere.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import pytest
import structlog

from adapters import ADAPTERS
from daemon.config.settings import load_config
from daemon.shell import merchant as pipeline
from daemon.shell.daemon import Daemon
from daemon.store import SQLiteStore
from tests.conftest import World, eventually, idle, running
from tests.integration.test_lifecycle import free_port, post_webhook
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


class FullDisk(SQLiteStore):
    """SQLite's own error for a full disk, on every write while `full` is set."""

    full = False

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        if self.full:
            self._writing = True
            raise sqlite3.OperationalError("database or disk is full")
        with super()._tx():
            yield


async def readyz(port: int) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as answer,
    ):
        return answer.status, await answer.text()


def restock(world: World, quantity: float) -> None:
    for offer in world.keycrm.offers.values():
        offer.stock = {1: (quantity, 0.0)}


async def test_a_full_disk_is_a_state_that_passes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.keycrm.populate(20)
    restock(world, 3)
    await world.add_shop("pos")
    stores: list[FullDisk] = []

    def open_full(path: Path, *, merchants: int = 1) -> FullDisk:
        del merchants  # one state: the default page cache
        stores.append(FullDisk(path))
        return stores[-1]

    monkeypatch.setattr(pipeline, "open_store", open_full)
    monkeypatch.setattr("daemon.keycrm.source._STORE_RETRY", 0.2)
    monkeypatch.setattr("daemon.send.dispatch.STORE_RETRY", 0.2)
    port = free_port()
    daemon = Daemon(world.config(listen=f"127.0.0.1:{port}"), handle_signals=False)
    with structlog.testing.capture_logs() as logs:
        async with running(daemon):
            await eventually(lambda: in_sync(world) and idle(daemon))
            (store,) = stores
            store.full = True
            restock(world, 7)
            assert daemon.parts is not None
            # A webhook the store cannot keep is refused, so keyCRM knows it did not land.
            skus = [o.sku or "" for o in world.keycrm.offers.values()]
            assert await post_webhook(port, world.webhook_token, skus) == 503
            daemon.parts.source.request_scan()
            await eventually(lambda: failing(daemon))
            status, text = await readyz(port)
            assert status == 503 and "cannot write" in text
            await eventually(
                lambda: (
                    (
                        daemon.metrics.registry.get_sample_value(
                            "stocksync_store_errors_total", {"operation": "write"}
                        )
                        or 0
                    )
                    >= 3
                )
            )
            assert not in_sync(world)  # nothing was acknowledged meanwhile
            store.full = False  # space is back
            await eventually(lambda: in_sync(world) and idle(daemon), timeout=15)
            assert (await readyz(port))[0] == 200
            assert await post_webhook(port, world.webhook_token, skus) == 202
    refused = daemon.metrics.registry.get_sample_value(
        "stocksync_webhook_events_total", {"outcome": "rejected"}
    )
    assert refused == 1
    events = [e["event"] for e in logs]
    assert events.count("webhook.refused") == 1
    assert events.count("store.unavailable") == 1  # once per episode, not per call
    assert events.count("store.recovered") == 1


def _mount_tmpfs(target: Path, size: str) -> str | None:
    """Mount a small tmpfs; None if done, else why it cannot be done here."""
    if os.geteuid() != 0:
        return "needs root to mount a size-limited tmpfs"
    target.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        return f"cannot mount tmpfs here: {result.stderr.decode().strip()}"
    return None


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem is full; return it."""
    filler = folder / "filler"
    # Unbuffered: a buffer left over at close would fail again outside the suppress.
    for size in (65536, 1):  # then the last few bytes
        with contextlib.suppress(OSError), filler.open("ab", buffering=0) as out:
            while True:
                out.write(b"\0" * size)
    return filler


def _truncate_wal(path: Path) -> bool:
    """Checkpoint the WAL into the database and cut it to nothing; False if a writer was busy."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0 and path.with_name(path.name + "-wal").stat().st_size == 0


def failing(daemon: Daemon) -> bool:
    return daemon.store is not None and daemon.store.health.reason is not None


async def test_a_really_full_disk_under_the_state_file(world: World, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    why = _mount_tmpfs(disk, "32m")
    if why is not None:
        pytest.skip(why)
    try:
        world.keycrm.populate(200)
        restock(world, 3)
        pos = await world.add_shop("pos")
        path = world.write_config()
        text = path.read_text().replace(str(world.tmp_path / "state.db"), str(disk / "state.db"))
        path.write_text(text)
        config = load_config(path, ADAPTERS)
        daemon = Daemon(config, handle_signals=False)
        async with running(daemon):
            await eventually(lambda: in_sync(world) and idle(daemon))
            # An empty WAL: SQLite rewrites a WAL in place after a checkpoint, so without this
            # the next writes could fit in the space the last ones left and never meet the
            # full disk (the test then depended on how big the WAL happened to be).
            await eventually(lambda: _truncate_wal(disk / "state.db"))
            filler = _fill(disk)
            assert daemon.parts is not None
            for round_ in range(5):  # keep changing until a write hits the full disk
                restock(world, 10 + round_)
                daemon.parts.source.request_scan()
                with contextlib.suppress(TimeoutError):
                    await eventually(lambda: failing(daemon), timeout=2)
                if daemon.store is not None and daemon.store.health.reason:
                    break
            assert daemon.store is not None and daemon.store.health.reason is not None
            assert "full" in daemon.store.health.reason
            assert daemon.parts is not None  # still running
            filler.unlink()
            daemon.parts.source.request_scan()
            await eventually(lambda: in_sync(world) and idle(daemon), timeout=30)
            assert daemon.store.health.reason is None
        assert set(pos.stock.values()) == {10 + round_}
        db = sqlite3.connect(disk / "state.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            db.close()
    finally:
        await anyio.run_process(["umount", "-l", str(disk)], check=False)
