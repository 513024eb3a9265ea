"""`stocksync migrate-state`: a SQLite state reads the same from PostgreSQL after the copy."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from daemon.commands.cli import main
from daemon.core.models import ItemValue, Outcome, StockLevel, Value, Verdict
from daemon.rules.plan import Contribution
from daemon.store import SQLiteStore, Store, Timing
from daemon.store.pg import lookups
from daemon.store.pg.backend import PostgresStore
from daemon.store.pg.connect import connect

T = Timing(debounce=0.0, max_delay=30.0)


def backoff(_attempt: int) -> float:
    return 5.0


async def build(path: Path) -> None:
    store = SQLiteStore(path)
    levels = [StockLevel(f"S{n}", n, Decimal(n), Decimal(0), Decimal("9.5")) for n in range(5)]
    await store.save_stock(levels, 1)
    shares = [(f"S{n}", Contribution(f"k{n}", Decimal(n), Decimal("9.5"))) for n in range(5)]
    await store.replace_shares("c", [f"S{n}" for n in range(5)], shares)
    await store.set_desired("c", {f"k{n}": Value(quantity=n) for n in range(5)}, 10.0, T)
    claimed = await store.claim("c", 11.0, 3)
    verdicts = [Verdict(item.key, item.value, Outcome.ACKNOWLEDGED) for item in claimed[:2]]
    verdicts.append(Verdict(claimed[2].key, claimed[2].value, Outcome.REJECTED, error="nope"))
    await store.settle("c", verdicts, 12.0, T, backoff)
    await store.claim("c", 13.0, 1)  # left in flight: the new leader recovers it
    await store.set_meta("last_complete_scan", "1")
    await store.close()


async def snapshot(store: Store) -> tuple[object, ...]:
    try:
        return (
            await store.items(),
            [await store.history(f"S{n}") for n in range(5)],
            await store.records(),
            await store.counts(),
            await store.positive_acked(),
            await store.skus("c", ["k1", "k2"]),
            await store.get_meta("last_complete_scan"),
            await store.next_due("c"),
        )
    finally:
        await store.close()


def test_a_sqlite_state_reads_the_same_from_postgresql(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.db"
    anyio.run(build, path)
    before = anyio.run(snapshot, SQLiteStore(path))
    assert main(["migrate-state", "--from", str(path), "--to", pg_dsn]) == 0
    out = capsys.readouterr().out
    assert "5 records" in out and "5 items" in out and "3 history" in out

    async def after() -> tuple[object, ...]:
        return await snapshot(await PostgresStore.open(pg_dsn))

    assert anyio.run(after) == before

    async def recovered() -> list[ItemValue]:
        store = await PostgresStore.open(pg_dsn)
        try:
            assert await store.recover(20.0) == 1
            return await store.claim("c", 30.0, 10)
        finally:
            await store.close()

    assert len(anyio.run(recovered)) == 2  # the one in flight, and the one never claimed


def test_migrate_state_refuses_to_mix_states_and_passwords_in_the_dsn(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.db"
    anyio.run(build, path)
    assert main(["migrate-state", "--from", str(path), "--to", pg_dsn]) == 0
    assert main(["migrate-state", "--from", str(path), "--to", pg_dsn]) == 1
    assert "already holds a state" in capsys.readouterr().err
    # Another merchant's state goes into its own schema, beside default's.
    assert main(["migrate-state", "--from", str(path), "--to", pg_dsn, "--merchant", "acme"]) == 0
    assert "(merchant acme): 5 records" in capsys.readouterr().out

    async def acme() -> tuple[object, ...]:
        return await snapshot(await PostgresStore.open(pg_dsn, merchant="acme"))

    assert anyio.run(acme) == anyio.run(snapshot, SQLiteStore(path))
    with pytest.raises(SystemExit):
        main(["migrate-state", "--from", str(path), "--to", pg_dsn, "--merchant", "No!"])
    assert "invalid" in capsys.readouterr().err
    assert main(["migrate-state", "--from", str(tmp_path / "none.db"), "--to", pg_dsn]) == 1
    assert "no state file" in capsys.readouterr().err
    leaky = "postgresql://u:hunter2@localhost/x"
    assert main(["migrate-state", "--from", str(path), "--to", leaky]) == 2
    err = capsys.readouterr().err
    assert "must not contain the password" in err and "hunter2" not in err


def test_one_merchants_state_goes_back_into_a_file_of_its_own(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, back = tmp_path / "state.db", tmp_path / "out" / "acme.db"
    anyio.run(build, path)
    before = anyio.run(snapshot, SQLiteStore(path))
    assert main(["migrate-state", "--from", str(path), "--to", pg_dsn, "--merchant", "acme"]) == 0

    async def beside() -> None:  # another merchant's state and webhooks, and one of acme's
        neighbour = await PostgresStore.open(pg_dsn)
        await neighbour.set_desired("c", {"k9": Value(quantity=9)}, 10.0, T)
        await neighbour.close()
        async with await connect(pg_dsn) as conn:
            await lookups.enqueue(conn, "default", ["S8"])
            await lookups.enqueue(conn, "acme", ["S9"])

    anyio.run(beside)
    assert main(["migrate-state", "--from", pg_dsn, "--to", str(back), "--merchant", "acme"]) == 0
    assert "(merchant acme): 5 records" in capsys.readouterr().out
    assert anyio.run(snapshot, SQLiteStore(back)) == before
    assert anyio.run(SQLiteStore(back).lookup_depth)[0] == 1
    assert main(["migrate-state", "--from", pg_dsn, "--to", str(back), "--merchant", "acme"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["migrate-state", "--from", pg_dsn, "--to", str(tmp_path / "x.db"), "--merchant",
                 "zed"]) == 1  # fmt: skip
    assert "no state of merchant zed" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "x.db.partial").exists()
