"""Two merchants of one deployment never see each other's state: on SQLite two files in the
state folder (made when missing), on PostgreSQL two schemas of one database on one pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from daemon.core.errors import StateUnusable
from daemon.core.models import Outcome, StockLevel, Value, Verdict
from daemon.rules.plan import Contribution
from daemon.shell.statelock import StateLock
from daemon.store import SQLiteStore, Store, Timing, cache_for, open_store
from daemon.store.pg.merchants import schema_name
from daemon.store.pg.stores import PostgresStores

pytestmark = pytest.mark.anyio

T = Timing(debounce=0.0, max_delay=1.0)


@pytest.fixture(params=["sqlite", "postgres"])
async def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Merchants acme and bolt, as a process holds them."""
    if request.param == "sqlite":
        folder = tmp_path / "state"  # missing: the first store makes it
        acme, bolt = SQLiteStore(folder / "acme.db"), SQLiteStore(folder / "bolt.db")
        yield acme, bolt
        await acme.close()
        await bolt.close()
        return
    stores = await PostgresStores.open(request.getfixturevalue("pg_dsn"), max_size=2)
    yield await stores.store_for("acme"), await stores.store_for("bolt")
    await stores.close()


async def write(store: Store, quantity: int, *, at: float) -> None:
    """One SKU `S` feeding key `k` of channel `c`, pushed and acknowledged; a meta value."""
    level = StockLevel("S", 1, Decimal(quantity), Decimal(0), None)
    await store.save_stock([level], 1)
    await store.replace_shares("c", ["S"], [("S", Contribution("k", Decimal(quantity), None))])
    await store.set_desired("c", {"k": Value(quantity=quantity)}, at, T)
    sent = await store.claim("c", at + 1, 10)
    verdicts = [Verdict(i.key, i.value, Outcome.ACKNOWLEDGED) for i in sent]
    await store.settle("c", verdicts, at + 1, T, lambda _attempt: 1.0)
    await store.set_meta("owner", str(quantity))


async def test_two_merchants_never_see_each_others_state(pair: tuple[Store, Store]) -> None:
    acme, bolt = pair
    await write(acme, 3, at=10.0)
    assert await bolt.records() == []
    assert await bolt.items() == []
    assert await bolt.counts() == {}
    assert await bolt.positive_acked() == {}
    assert await bolt.history("S") == []
    assert await bolt.get_meta("owner") is None

    await write(bolt, 0, at=20.0)  # same SKU, channel and key: a state of its own
    assert [(r.sku, r.stock.quantity) for r in await acme.records()] == [("S", 3)]
    assert [(r.key, r.acked) for r in await acme.items()] == [("k", Value(quantity=3))]
    assert (await acme.counts())["c"].get("ok") == 1
    assert await acme.positive_acked() == {"c": 1}
    assert [h.at for h in await acme.history("S")] == [11.0]
    assert await acme.get_meta("owner") == "3"
    assert await bolt.positive_acked() == {}
    assert await bolt.get_meta("owner") == "0"


def test_each_merchant_file_has_its_own_lock_and_a_small_cache(tmp_path: Path) -> None:
    folder = tmp_path / "state"  # missing, as `[daemon] state` names it before the first run
    with StateLock(folder / "acme.db"), StateLock(folder / "bolt.db"):
        with pytest.raises(StateUnusable, match="another stocksync"):
            StateLock(folder / "acme.db").__enter__()
        many = open_store(folder / "acme.db", merchants=200)
        one = open_store(folder / "bolt.db")
        pages = "PRAGMA cache_size"
        assert many._db.execute(pages).fetchone() == (-cache_for(200),)
        assert one._db.execute(pages).fetchone() == (-2000,)  # SQLite's default
        assert cache_for(200) < 400
        anyio.run(many.close)
        anyio.run(one.close)
    assert sorted(p.name for p in folder.iterdir()) == [
        "acme.db",
        "acme.db.lock",
        "bolt.db",
        "bolt.db.lock",
    ]


def test_long_merchant_ids_get_schemas_of_their_own() -> None:
    long, other = "m" * 63, "m" * 62 + "n"
    assert schema_name("acme") == "stocksync_acme"
    assert len(schema_name(long)) == 63 and schema_name(long) != schema_name(other)
    with pytest.raises(ValueError, match="not a merchant id"):
        schema_name('a"; DROP')
