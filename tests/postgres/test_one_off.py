"""`stocksync once` and `stocksync drift` on a PostgreSQL state refuse, naming `daemon.state`.

`once` would push outside the lease, beside a live leader; `drift` would read the channels
against acknowledgements the leader is moving. Both refuse before touching the database: the
leader keeps its lease, and no channel hears from them.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import psycopg
import pytest

from daemon.commands.cli import main
from tests.conftest import World, eventually
from tests.integration.test_sync import in_sync
from tests.postgres.test_ha import Replicas, leader_elected, replicas, url_dsn
from tests.unit.test_config import GOOD

__all__ = ["replicas"]  # a fixture, found by name in this module

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def lease(dsn: str) -> tuple[object, ...] | None:
    with psycopg.connect(dsn) as db:
        return db.execute("SELECT holder, epoch FROM leases").fetchone()


async def test_once_and_drift_refuse_beside_a_live_leader(
    world: World, replicas: Replicas, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await replicas.start("a")
    await eventually(lambda: in_sync(world), timeout=30)
    assert await leader_elected(replicas) == "a"
    held = lease(pg_dsn)
    world.keycrm.set_stock("SKU-00001", 91)  # no webhook: only a scan would find it
    pos = world.shops["pos"]
    pushes = len(pos.senders)
    config = str(world.tmp_path / "a.toml")
    for command in (["once", "-c", config], ["once", "--dry-run", "-c", config],
                    ["drift", "-c", config]):  # fmt: skip
        capsys.readouterr()
        assert await anyio.to_thread.run_sync(main, command) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("daemon.state: `")
        assert "works on a SQLite state only" in captured.err
        assert captured.err.count("\n") == 1
    assert len(pos.senders) == pushes  # nobody pushed the change
    assert lease(pg_dsn) == held  # and the leader still leads, under the same epoch
    assert await replicas.role("a") == "leader"


def test_they_refuse_without_touching_the_database(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_KEY", "secret-key-value")
    monkeypatch.setenv("T_POS", "secret-pos-value")
    config = tmp_path / "c.toml"  # a whole config: these commands load it all
    config.write_text(GOOD.replace('state = "state.db"', f'state = "{url_dsn(pg_dsn)}"'))
    for command in ("once", "drift"):
        assert main([command, "-c", str(config)]) == 2
    with psycopg.connect(pg_dsn) as db:  # not even migrated
        assert db.execute("SELECT to_regclass('leases')").fetchone() == (None,)
