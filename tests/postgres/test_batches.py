"""The PostgreSQL store writes a batch in a few statements: what that must not change.

Counts kept per statement (migration 5) equal a recount, also across the upgrade from the row
triggers; a batch that names a row twice keeps the last, as one statement per row did; a
batch's timestamps may mix ints and floats; and the reads inside a write probe indexes even
before the tables have statistics.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, LiteralString

import anyio
import orjson
import psycopg
import pytest

from daemon.core.models import Outcome, StockLevel, Value, Verdict
from daemon.rules.plan import Contribution
from daemon.store import Timing
from daemon.store.pg.backend import PostgresStore
from daemon.store.pg.base import LOAD as _LOAD
from daemon.store.pg.base import TRIM_HISTORY as _TRIM_HISTORY
from daemon.store.pg.base import channel_class
from daemon.store.pg.connect import Pool, open_pool
from daemon.store.pg.merchants import DEFAULT_MERCHANT, scope
from daemon.store.pg.migrate import MIGRATIONS, migrate
from daemon.store.pg.queue import _ACKNOWLEDGE, _CLAIM, _COUNT_DUE, _NEXT_DUE
from daemon.store.pg.reading import _OLDEST_PENDING

pytestmark = pytest.mark.anyio

T = Timing(debounce=0.0, max_delay=30.0)
ON_HAND = Value(quantity=3)
SOLD_OUT = Value(quantity=0)


def backoff(_attempt: int) -> float:
    return 5.0


def _level(sku: str, quantity: int) -> StockLevel:
    return StockLevel(sku, 1, Decimal(quantity), Decimal(0), None)


async def _kept(pool: Pool) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    async with pool.connection() as conn:
        await scope(conn, DEFAULT_MERCHANT)
        cursor = await conn.execute("SELECT channel, status, n FROM item_counts WHERE n <> 0")
        statuses = {(c, s): int(n) for c, s, n in await cursor.fetchall()}
        cursor = await conn.execute("SELECT channel, n FROM in_stock_counts WHERE n <> 0")
        return statuses, {c: int(n) for c, n in await cursor.fetchall()}


async def _recounted(pool: Pool) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    async with pool.connection() as conn:
        await scope(conn, DEFAULT_MERCHANT)
        cursor = await conn.execute("SELECT channel, status, count(*) FROM items GROUP BY 1, 2")
        statuses = {(c, s): int(n) for c, s, n in await cursor.fetchall()}
        cursor = await conn.execute(
            "SELECT channel, sum(stocksync_in_stock(acked)) FROM items GROUP BY channel"
        )
        return statuses, {c: int(n) for c, n in await cursor.fetchall() if n}


async def _workload(store: PostgresStore, channel: str, start: float) -> None:
    """Every kind of batch write: new items, claims, each outcome, a release, drift, a resync."""
    keys = [f"k{n:02d}" for n in range(12)]
    await store.set_desired(channel, {k: ON_HAND for k in keys}, start, T)
    sent = await store.claim(channel, start + 1, 9)
    outcomes = [Outcome.ACKNOWLEDGED] * 6 + [Outcome.RETRY, Outcome.REJECTED]
    verdicts = [Verdict(i.key, i.value, o) for i, o in zip(sent, outcomes, strict=False)]
    await store.settle(channel, verdicts, start + 2, T, backoff)
    await store.release(channel, [sent[-1].key], start + 2, T)
    await store.set_desired(channel, {keys[0]: SOLD_OUT, keys[1]: SOLD_OUT}, start + 3, T)
    await store.mark_drifted(channel, [(keys[2], SOLD_OUT)], start + 4)
    await store.recover(start + 5)
    await store.force_all(start + 6)


async def test_counts_kept_per_statement_equal_a_recount(pool: Pool) -> None:
    store = PostgresStore(pool)
    await _workload(store, "a", 10.0)
    await _workload(store, "b", 20.0)
    await store.claim("a", 40.0, 5)
    assert await _kept(pool) == await _recounted(pool)
    assert (await store.counts())["a"]["sending"] == 5


async def test_counts_survive_the_upgrade_from_row_triggers(pg_dsn: str) -> None:
    pool = await open_pool(pg_dsn, max_size=2)
    try:
        async with pool.connection() as conn:
            assert await migrate(conn, MIGRATIONS[:4]) == [1, 2, 3, 4]
        store = PostgresStore(pool)
        await _workload(store, "a", 10.0)  # counted by the row triggers of step 4
        async with pool.connection() as conn:
            assert await migrate(conn) == [m.version for m in MIGRATIONS[4:]]
        await _workload(store, "b", 20.0)  # by the statement triggers, on top of the old counts
        await store.force_all(30.0)
        assert await _kept(pool) == await _recounted(pool)
    finally:
        await pool.close()


async def test_a_batch_naming_a_row_twice_keeps_the_last(pool: Pool) -> None:
    store = PostgresStore(pool)
    levels = [_level("s1", 1), _level("s2", 2), _level("s1", 7)]
    await store.save_stock(levels, scan=1)
    assert {r.sku: r.stock.quantity for r in await store.records()} == {"s1": 7, "s2": 2}
    shares = [
        ("s1", Contribution("k", Decimal(1), None)),
        ("s1", Contribution("k", Decimal(4), None)),
    ]
    assert await store.replace_shares("c", ["s1"], shares) == {
        "k": [Contribution("k", Decimal(4), None)]
    }


async def test_a_batch_may_mix_whole_and_fractional_timestamps(pool: Pool) -> None:
    # float8[] parameters refuse lists mixing int and float: every timestamp goes as a float.
    store = PostgresStore(pool)
    await store.set_desired("c", {"a": ON_HAND}, 1.5, T)
    await store.set_desired("c", {"a": SOLD_OUT, "b": ON_HAND}, 2, T)  # diverged_at 1.5 and 2
    sent = await store.claim("c", 3, 10)
    await store.settle("c", [Verdict(i.key, i.value, Outcome.ACKNOWLEDGED) for i in sent], 4, T,
                       backoff)  # fmt: skip
    assert {r.key: r.status for r in await store.items("c")} == {"a": "ok", "b": "ok"}


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan] if "Relation Name" in plan or "Index Name" in plan else []
    for child in plan.get("Plans", []):
        nodes += _scans(child)
    return nodes


async def _plan(
    pool: Pool, query: LiteralString, params: tuple[Any, ...] | dict[str, Any]
) -> list[dict[str, Any]]:
    async with pool.connection() as conn, conn.transaction(force_rollback=True):
        await scope(conn, DEFAULT_MERCHANT)
        cursor = await conn.execute("EXPLAIN (FORMAT JSON) " + query, params)
        row = await cursor.fetchone()
    assert row is not None
    document = row[0] if isinstance(row[0], list) else orjson.loads(row[0])
    return _scans(document[0]["Plan"])


async def test_the_queue_indexes_hold_only_what_their_reads_look_for(
    pool: Pool, pg_dsn: str
) -> None:
    """Merchant step 5: `items_due` holds the pending items, `items_lag` the diverged ones, so
    an acknowledged item leaves both (two index entries fewer per claim and per acknowledgement);
    and each read names the predicate, so it still probes its index instead of reading them all."""
    store = PostgresStore(pool)
    keys = [f"k{n:04d}" for n in range(3000)]
    await store.set_desired("c", {k: ON_HAND for k in keys}, 1.0, T)
    sent = await store.claim("c", 2.0, 2900)
    await store.settle("c", [Verdict(i.key, i.value, Outcome.ACKNOWLEDGED) for i in sent], 3.0, T,
                       backoff)  # fmt: skip
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await scope(conn, DEFAULT_MERCHANT)
        await conn.execute("SET search_path = stocksync_default")
        await conn.execute("VACUUM ANALYZE items")  # exact entry counts in reltuples
        cursor = await conn.execute(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN ('items_due', 'items_lag')"
            " AND relnamespace = 'stocksync_default'::regnamespace"
        )
        entries = {name: int(n) for name, n in await cursor.fetchall()}
    assert entries == {"items_due": 100, "items_lag": 100}
    params = {"c": "c", "channel": "c", "now": 9.0, "limit": 100}
    reads: list[tuple[LiteralString, str]] = [
        (_CLAIM, "items_due"),
        ("SELECT " + _NEXT_DUE, "items_due"),
        (_COUNT_DUE, "items_due"),
        (_OLDEST_PENDING, "items_lag"),
    ]
    for query, index in reads:
        plan = await _plan(pool, query, params)
        on_items = [
            n for n in plan if n.get("Relation Name") == "items" and n["Node Type"] != "ModifyTable"
        ]
        assert any(n.get("Index Name") == index for n in on_items), (query, on_items)
        assert not [n for n in on_items if n["Node Type"] == "Seq Scan"], (query, on_items)


async def test_writes_probe_indexes_before_the_tables_have_statistics(pool: Pool) -> None:
    store = PostgresStore(pool)
    keys = [f"k{n:04d}" for n in range(3000)]
    await store.set_desired("c", {k: ON_HAND for k in keys}, 1.0, T)
    sent = await store.claim("c", 2.0, 3000)
    await store.settle("c", [Verdict(i.key, i.value, Outcome.ACKNOWLEDGED) for i in sent], 3.0, T,
                       backoff)  # fmt: skip

    load = await _plan(pool, _LOAD, (keys[:100], "c"))
    assert [(n["Node Type"], n.get("Index Name")) for n in load if n.get("Relation Name")] == [
        ("Index Scan", "items_pkey")
    ]
    # The set-based moves: the due rows by a due index, acknowledged ones by primary key, then
    # each moved by its address (a join by key read the whole channel: a Seq Scan).
    claim = await _plan(pool, _CLAIM, {"channel": "c", "now": 9.0, "limit": 100})
    acks = {"keys": keys[:100], "sents": [ON_HAND.encode()] * 100, "channel": "c", "now": 9.0}
    acknowledge = await _plan(pool, _ACKNOWLEDGE, acks)
    for plan, probe in ((claim, {"items_due", "items_lag"}), (acknowledge, {"items_pkey"})):
        scans = [
            n.get("Index Name", n["Node Type"])
            for n in plan
            if n.get("Relation Name") == "items" and n["Node Type"] != "ModifyTable"
        ]
        assert len(scans) == 2 and scans.count("Tid Scan") == 1, scans
        assert set(scans) - {"Tid Scan"} <= probe, scans
    trim = await _plan(pool, _TRIM_HISTORY, (keys[:100], "c", 99, "c"))
    on_history = [n for n in trim if n.get("Relation Name") == "history" or n.get("Index Name")]
    assert any(n.get("Index Name") == "history_by_key" for n in on_history)
    # history_by_key only per key, never all of the channel's history; by id (a small table:
    # read whole, cheaply) for the rows found.
    for node in on_history:
        if node.get("Index Name") == "history_by_key":
            assert "key =" in node["Index Cond"], node
        elif "Index Name" in node:
            assert node["Index Name"] == "history_pkey", node
        elif node["Node Type"] == "Seq Scan":
            assert node["Filter"].startswith("(id = ANY"), node


async def test_next_due_is_the_earliest_over_every_priority(pool: Pool) -> None:
    store = PostgresStore(pool)
    slow = Timing(debounce=50.0, max_delay=100.0)
    assert await store.next_due("c") is None
    await store.set_desired("c", {"a": ON_HAND}, 1.0, slow)
    sent = await store.claim("c", 60.0, 10)
    await store.settle("c", [Verdict(i.key, i.value, Outcome.ACKNOWLEDGED) for i in sent], 61.0,
                       slow, backoff)  # fmt: skip
    await store.force_all(70.0)  # the backlog: due at once, behind fresh changes
    await store.set_desired("c", {"b": ON_HAND, "c": SOLD_OUT}, 71.0, slow)  # fresh: due at 121
    assert await store.next_due("c") == 70.0
    assert [i.key for i in await store.claim("c", 70.0, 10)] == ["a"]
    assert await store.next_due("c") == 121.0


async def test_a_claim_answers_what_is_left_due_until_a_change_moves_it(pool: Pool) -> None:
    """The dispatcher asks `next_due` and `count_due` before every claim: a claim that leaves
    items due answers both (the same answers, no round trip); a change drops them."""
    store = PostgresStore(pool)
    await store.set_desired("c", {f"k{n}": ON_HAND for n in range(5)}, 1.0, T)
    asked: list[str] = []
    select = store._select

    async def counted(query: LiteralString, params: Any = None) -> Any:
        asked.append(query)
        return await select(query, params)

    store._select = counted  # type: ignore[method-assign]
    assert len(await store.claim("c", 2.0, 2)) == 2
    assert await store.next_due("c") == 1.0
    assert await store.count_due("c", 3.0, 2) == 2  # counted up to the claim's batch
    assert asked == []  # answered by the claim
    assert await store.count_due("c", 3.0, 3) == 3  # once: asked again, the database answers
    assert len(asked) == 1

    assert len(await store.claim("c", 2.0, 2)) == 2  # k4 is left, due at 1.0
    later = Timing(debounce=10.0, max_delay=100.0)
    await store.set_desired("c", {"k4": SOLD_OUT}, 5.0, later)  # a change: due at 15 now
    assert await store.next_due("c") == 15.0
    assert await store.count_due("c", 6.0, 3) == 0


async def test_a_claim_waits_for_no_other_write_of_its_channel(pool: Pool) -> None:
    store = PostgresStore(pool)
    await store.set_desired("c", {k: ON_HAND for k in ("a", "b", "c")}, 1.0, T)
    async with pool.connection() as other, other.transaction():
        # Another write of the channel under way: its channel lock, and the row it loaded.
        await scope(other, DEFAULT_MERCHANT)
        await other.execute(
            "SELECT pg_advisory_xact_lock(%s::int4, hashtext('c'))",
            (channel_class(DEFAULT_MERCHANT),),
        )
        await other.execute("SELECT 1 FROM items WHERE key = 'a' FOR UPDATE")
        with anyio.fail_after(10):  # it would wait for the other transaction to end
            taken = await store.claim("c", 2.0, 10)
        assert sorted(i.key for i in taken) == ["b", "c"]  # never a row another write holds
    assert [i.key for i in await store.claim("c", 3.0, 10)] == ["a"]
