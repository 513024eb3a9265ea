"""Cheap rescans: an offer whose bytes did not change since the last scan is not encoded,
compared or rewritten again (the SQLite store keeps each record's raw digest); anything else
is compared in full, so skipping can never hide a change.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.core.models import StockLevel
from daemon.keycrm.payloads import parse_stock_page
from daemon.store import SQLiteStore, Store

pytestmark = pytest.mark.anyio


def page(*offers: dict[str, Any]) -> list[StockLevel]:
    """Levels parsed from a keyCRM page body, as a scan gets them (each with its digest)."""
    body = {"current_page": 1, "last_page": 1, "total": len(offers), "data": list(offers)}
    return parse_stock_page(orjson.loads(orjson.dumps(body))).items


def offer(sku: str, quantity: int | float, offer_id: int = 1) -> dict[str, Any]:
    return {"id": offer_id, "sku": sku, "price": 9.5, "quantity": quantity, "reserve": 0}


def row(path: Path, sku: str) -> tuple[Any, ...]:
    with sqlite3.connect(path) as db:
        found = db.execute(
            "SELECT stock, digest, seen_scan, updated_at FROM records WHERE sku = ?", (sku,)
        ).fetchone()
    assert found is not None
    return tuple(found)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> Any:
    opened = SQLiteStore(tmp_path / "state.db")
    yield opened
    await opened.close()


async def test_an_unchanged_offer_only_moves_its_scan_mark(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    assert [r.sku for r in await sqlite_store.save_stock(page(offer("A", 3)), 1)] == ["A"]
    stock, digest, _, updated = row(tmp_path / "state.db", "A")
    assert digest is not None

    assert await sqlite_store.save_stock(page(offer("A", 3)), 2) == []
    assert row(tmp_path / "state.db", "A") == (stock, digest, 2, updated)
    assert await sqlite_store.vanished(2) == []  # the mark moved: A was seen


async def test_a_matching_digest_is_trusted_without_encoding(sqlite_store: SQLiteStore) -> None:
    """The skip is real: a level that carries the stored digest is not even compared.
    (keyCRM cannot produce this: equal bytes parse to equal levels.)"""
    [first] = page(offer("A", 3))
    await sqlite_store.save_stock([first], 1)
    forged = replace(first, quantity=Decimal(99))
    assert forged.digest == first.digest
    assert await sqlite_store.save_stock([forged], 2) == []


async def test_a_new_digest_is_compared_in_full(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    await sqlite_store.save_stock(page(offer("A", 3)), 1)
    _, digest, _, updated = row(tmp_path / "state.db", "A")
    # Other bytes, same value (3.0 is 3): no change to plan, the new digest is kept.
    assert await sqlite_store.save_stock(page(offer("A", 3.0)), 2) == []
    _, new_digest, _, same_updated = row(tmp_path / "state.db", "A")
    assert new_digest != digest
    assert same_updated == updated  # updated_at says when the stock last changed
    changed = await sqlite_store.save_stock(page(offer("A", 4)), 3)
    assert [r.stock.quantity for r in changed] == [Decimal(4)]


async def test_levels_without_a_digest_clear_the_stored_one(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    """A vanished SKU is zeroed without a digest: when the same offer comes back byte for byte,
    it must be seen as a change, not skipped as 'the same bytes as last time'."""
    await sqlite_store.save_stock(page(offer("A", 3), offer("B", 1, offer_id=2)), 1)
    for scan in (2, 3):  # a SKU vanishes after two scans without it
        await sqlite_store.save_stock(page(offer("B", 1, offer_id=2)), scan)
    gone = await sqlite_store.vanished(3)
    assert [r.sku for r in gone] == ["A"]
    assert row(tmp_path / "state.db", "A")[1] is None
    back = await sqlite_store.save_stock(page(offer("A", 3)), 4)
    assert [r.stock.quantity for r in back] == [Decimal(3)]


async def test_a_lookup_of_unchanged_bytes_writes_nothing(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    await sqlite_store.save_stock(page(offer("A", 3)), 1)
    before = row(tmp_path / "state.db", "A")
    assert await sqlite_store.save_stock(page(offer("A", 3)), None) == []
    assert row(tmp_path / "state.db", "A") == before


async def test_the_digest_is_not_part_of_a_levels_value(store: Store) -> None:
    """Both backends: two levels that differ only in digest are the same record."""
    [parsed] = page(offer("A", 3))
    await store.save_stock([parsed], 1)
    assert await store.save_stock([replace(parsed, digest=None)], 2) == []
    assert await store.save_stock([replace(parsed, digest=b"other")], 3) == []


async def test_an_offer_orjson_cannot_write_back_is_stored_without_a_digest(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    # Python's json reads integers of any size; orjson writes at most 64 bits. A field
    # stocksync ignores must not stop the page: the offer is simply compared in full.
    body = {"current_page": 1, "last_page": 1, "total": 1}
    body["data"] = [{**offer("A", 3), "external_id": 2**70}]
    [level] = parse_stock_page(body).items
    assert level.digest is None
    assert [r.sku for r in await sqlite_store.save_stock([level], 1)] == ["A"]
    assert row(tmp_path / "state.db", "A")[1] is None
    assert await sqlite_store.save_stock([level], 2) == []  # still no change, compared in full
