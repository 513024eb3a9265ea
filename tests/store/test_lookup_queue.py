"""The durable look-up queue of a SQLite state: the contract `daemon.keycrm.lookups` relies on.

The same cases as PostgreSQL's queue (tests/postgres/test_lookups.py): oldest first, each SKU
once, a SKU named again during its look-up survives `done`, a failed look-up unclaims, a dead
process's claims come back; plus what only the embedded queue has: a cap, and a restart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.store import Enqueued, LookupEntry, SQLiteStore
from daemon.store.sqlite.schema import _STEPS

pytestmark = pytest.mark.anyio

ME = "this-process"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "state.db")
    yield opened
    await opened.close()


def skus(entries: list[LookupEntry]) -> list[str]:
    return [entry.sku for entry in entries]


async def test_entries_are_claimed_oldest_first_once_and_deleted_when_done(
    store: SQLiteStore,
) -> None:
    assert await store.enqueue_lookups(["C", "A", "C"], cap=100, now=1.0) == Enqueued(2, 0)
    assert await store.enqueue_lookups(["B", "A"], cap=100, now=2.0) == Enqueued(1, 0)
    first = await store.claim_lookups(ME, 2, now=3.0)
    assert skus(first) == ["C", "A"]  # in the order they came (A kept its place), not sorted
    second = await store.claim_lookups(ME, 10, now=3.0)
    assert skus(second) == ["B"]  # claimed entries are not handed out twice
    assert await store.claim_lookups(ME, 10, now=3.0) == []
    assert await store.lookup_depth() == (3, 1.0)  # claimed ones are still queued
    assert await store.lookups_done(first) == 2
    assert await store.lookup_depth() == (1, 2.0)
    assert await store.lookups_done(second) == 1
    assert await store.lookup_depth() == (0, None)


async def test_a_sku_enqueued_again_during_its_lookup_stays_queued(store: SQLiteStore) -> None:
    await store.enqueue_lookups(["A", "B"], cap=100, now=1.0)
    claimed = await store.claim_lookups(ME, 10, now=2.0)
    # A webhook while the look-up is in flight: the answer on its way may predate the change.
    assert await store.enqueue_lookups(["A"], cap=100, now=3.0) == Enqueued(0, 0)
    assert await store.lookups_done(claimed) == 1  # B only
    again = await store.claim_lookups(ME, 10, now=4.0)
    assert skus(again) == ["A"]
    assert again[0].seq != claimed[0].seq
    assert await store.lookups_done(again) == 1
    assert await store.lookup_depth() == (0, None)


async def test_a_sku_enqueued_again_during_its_lookup_is_claimable_at_once(
    store: SQLiteStore,
) -> None:
    await store.enqueue_lookups(["A", "B"], cap=100, now=1.0)
    claimed = await store.claim_lookups(ME, 10, now=2.0)
    await store.enqueue_lookups(["A"], cap=100, now=3.0)
    in_flight_again = await store.claim_lookups(ME, 10, now=3.0)
    assert skus(in_flight_again) == ["A"]
    assert await store.lookups_done(claimed) == 1  # the first answer does not drop it
    assert await store.lookups_done(in_flight_again) == 1


async def test_a_failed_lookup_unclaims_in_place(store: SQLiteStore) -> None:
    await store.enqueue_lookups(["A", "B", "C"], cap=100, now=1.0)
    claimed = await store.claim_lookups(ME, 2, now=2.0)
    assert skus(claimed) == ["A", "B"]
    await store.unclaim_lookups(claimed)
    assert skus(await store.claim_lookups(ME, 10, now=2.0)) == ["A", "B", "C"]


async def test_a_dead_process_claims_come_back_and_a_hung_one_after_a_while(
    store: SQLiteStore,
) -> None:
    await store.enqueue_lookups(["A", "B"], cap=100, now=1.0)
    dead = await store.claim_lookups("killed", 1, now=2.0)
    assert skus(dead) == ["A"]
    # A new process claims under a new name: what the killed one held is taken at once.
    assert skus(await store.claim_lookups(ME, 10, now=2.0)) == ["A", "B"]
    assert await store.claim_lookups(ME, 10, now=61.0) == []
    assert skus(await store.claim_lookups(ME, 10, now=62.5)) == ["A", "B"]  # hung past 60 s
    assert await store.lookups_done(dead) == 1  # the dead one's answer still counts


async def test_the_cap_turns_new_skus_away_but_never_a_queued_one(store: SQLiteStore) -> None:
    assert await store.enqueue_lookups(["A", "B", "C"], cap=2, now=1.0) == Enqueued(2, 1)
    assert await store.enqueue_lookups(["B", "D", "A"], cap=2, now=2.0) == Enqueued(0, 1)
    claimed = await store.claim_lookups(ME, 10, now=3.0)
    assert skus(claimed) == ["A", "B"]
    await store.lookups_done(claimed[:1])
    assert await store.enqueue_lookups(["D"], cap=2, now=4.0) == Enqueued(1, 0)


async def test_the_queue_outlives_the_process(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SQLiteStore(path)
    await first.enqueue_lookups(["A", "B", "C"], cap=100, now=1.0)
    held = await first.claim_lookups("killed", 2, now=2.0)
    await first.lookups_done(held[:1])
    await first.close()  # what a SIGKILL leaves: committed rows, one of them still claimed
    second = SQLiteStore(path)
    try:
        assert await second.lookup_depth() == (2, 1.0)
        assert skus(await second.claim_lookups(ME, 10, now=3.0)) == ["B", "C"]
    finally:
        await second.close()


async def test_a_state_file_of_schema_three_gains_an_empty_queue(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    db = sqlite3.connect(path, isolation_level=None)
    for number, step in enumerate(_STEPS[:3], start=1):
        step(db)
        db.execute(f"PRAGMA user_version = {number}")
    db.close()
    store = SQLiteStore(path)
    try:
        assert await store.lookup_depth() == (0, None)
        assert await store.enqueue_lookups(["A"], cap=10, now=1.0) == Enqueued(1, 0)
    finally:
        await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (len(_STEPS),)
    finally:
        db.close()
