"""Rescans skip pages whose bytes did not change (daemon/store/pages.py), over real HTTP.

The skip is proven to happen (an unchanged rescan parses no page and saves no offer), and to
change nothing: the same random sequence of scans, page edits, inserts that shift pages,
duplicates, renamed and vanished SKUs, look-ups and failed or incomplete scans, run over a
store whose pages are never trusted (every page parsed, as before), ends with the same records.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from daemon.config.settings import KeycrmSettings
from daemon.core.errors import SourceError
from daemon.core.telemetry import MerchantMetrics, Metrics
from daemon.keycrm import client as client_module
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.client import KeycrmClient
from daemon.keycrm.source import Source
from daemon.reconcile.reconciler import Reconciler
from daemon.simulator import FakeKeycrm, FakeOffer
from daemon.store import PageMark, PostgresStore, SQLiteStore, Store
from tests.conftest import Serve

pytestmark = pytest.mark.anyio

KEY = "kc-pages-0123"


class Keycrm(FakeKeycrm):
    """The fake keyCRM, with a scan page that fails every attempt, and edits made while a
    scan is between two pages (each fake of a pair makes the same ones)."""

    def __init__(self) -> None:
        super().__init__(KEY)
        self.fail_page: int | None = None
        self.before_page: dict[int, Callable[[], None]] = {}

    async def stocks(self, request: web.Request) -> web.Response:
        if "filter[offers_sku]" not in request.query:
            number = int(request.query.get("page", "1"))
            if number == self.fail_page:
                return web.json_response({"message": "Server Error"}, status=500)
            edit = self.before_page.pop(number, None)
            if edit is not None:
                edit()
        return await super().stocks(request)


def offer(index: int, sku: str | None = None, quantity: float = 5) -> FakeOffer:
    return FakeOffer(
        id=index * 10,
        sku=sku or f"S{index:04d}",
        product_id=index,
        product_name=f"P{index}",
        stock={1: (quantity, 0.0)},
    )


async def source_for(
    fake: Keycrm, store: Store, serve: Serve, session: aiohttp.ClientSession, env: Any
) -> tuple[Source, MerchantMetrics]:
    url = await serve(fake.app())
    env.setenv("T_KC_PAGES", KEY)
    settings = KeycrmSettings.model_validate({"base_url": f"{url}/v1", "api_key_env": "T_KC_PAGES"})
    metrics = Metrics(CollectorRegistry(), "test").for_merchant("default", [])
    client = KeycrmClient(settings, session, RequestBudget(60_000), metrics, details=True)
    reconciler = Reconciler(store, [], metrics, timing={}, wake=lambda _: None)
    source = Source(
        client,
        store,
        reconciler,
        metrics,
        poll_interval=3600,
        catalog_interval=3600,
        needs_catalog=False,
    )
    return source, metrics


def sample(metrics: MerchantMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"merchant": "default", **labels})
    return value or 0.0


async def dump(store: Store) -> dict[str, tuple[Any, ...]]:
    """Every record as stored: stock, catalog and scan mark (and SQLite's offer digest)."""
    if isinstance(store, SQLiteStore):

        def read() -> list[Any]:
            return store._db.execute(
                "SELECT sku, stock, catalog, seen_scan, digest FROM records"
            ).fetchall()

        rows = await store._run(read)
    else:
        assert isinstance(store, PostgresStore)
        async with store._read() as conn:
            cursor = await conn.execute("SELECT sku, stock, catalog, seen_scan FROM records")
            rows = await cursor.fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


@pytest.fixture(params=["sqlite", "postgres"])
async def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two empty stores of one backend (two files; two merchants of one database)."""
    if request.param == "sqlite":
        stores: tuple[Store, Store] = (
            SQLiteStore(tmp_path / "skip.db"),
            SQLiteStore(tmp_path / "parse.db"),
        )
    else:
        dsn: str = request.getfixturevalue("pg_dsn")
        stores = (
            await PostgresStore.open(dsn, merchant="skip", max_size=2),
            await PostgresStore.open(dsn, merchant="parse", max_size=2),
        )
    yield stores
    for store in stores:
        await store.close()


class NeverTrusted:
    """A store whose recorded pages are never compared with: every page is parsed."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def scan_pages(self, scan: int) -> dict[int, PageMark]:
        await self._store.scan_pages(scan)
        return {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_an_unchanged_rescan_parses_no_page_and_saves_no_offer(
    store: Store, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = Keycrm()
    for index in range(1, 121):
        fake.add(offer(index))
    fake.add(FakeOffer(id=5, sku=None, product_id=0, product_name="no SKU"))
    parsed: list[int] = []
    saved: list[int] = []
    parse = client_module.parse_stock_page

    def counting_parse(body: Any) -> Any:
        parsed.append(1)
        return parse(body)

    monkeypatch.setattr(client_module, "parse_stock_page", counting_parse)
    save = store.save_stock

    async def counting_save(levels: Any, scan: Any, page: Any = None) -> Any:
        saved.extend(1 for _ in levels)
        return await save(levels, scan, page)

    monkeypatch.setattr(store, "save_stock", counting_save)
    async with aiohttp.ClientSession() as session:
        source, metrics = await source_for(fake, store, serve, session, monkeypatch)
        await source.scan_once()
        assert (len(parsed), len(saved)) == (3, 120)
        first = await dump(store)

        await source.scan_once()
        assert (len(parsed), len(saved)) == (3, 120)  # nothing parsed, nothing saved
        name = "stocksync_keycrm_scan_pages_unchanged_total"
        assert sample(metrics, name) == 3
        assert sample(metrics, "stocksync_keycrm_offers_skipped_total", reason="no_sku") == 2
        assert sample(metrics, "stocksync_skus_tracked") == 120
        second = await dump(store)
        assert {sku: row[:2] for sku, row in second.items()} == {
            sku: row[:2] for sku, row in first.items()
        }
        assert {row[2] for row in second.values()} == {2}  # every SKU seen by scan 2

        # A look-up stores a change; keyCRM then goes back to the bytes the page had: the page
        # is parsed (its record is newer than it), and the record follows keyCRM again.
        fake.set_stock("S0060", 9)
        await source.look_up(["S0060"])
        fake.set_stock("S0060", 5)
        await source.scan_once()
        assert len(parsed) == 5  # the look-up's page, and the scan page holding S0060
        assert sample(metrics, name) == 5
        assert [r.stock.quantity for r in await store.records_of(["S0060"])] == [Decimal(5)]
        assert (await dump(store))["S0060"][2] == 3


async def test_skipping_pages_ends_in_the_state_parsing_them_would(
    two_stores: tuple[Store, Store], serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    skipping, parsing = two_stores
    fakes = (Keycrm(), Keycrm())
    async with aiohttp.ClientSession() as session:
        sources = [
            await source_for(fakes[0], skipping, serve, session, monkeypatch),
            await source_for(fakes[1], NeverTrusted(parsing), serve, session, monkeypatch),  # type: ignore[arg-type]
        ]
        fallbacks: list[int] = []
        reparse = sources[0][0].client.parse_unchanged

        def counting_reparse(page: Any) -> Any:
            fallbacks.append(1)
            return reparse(page)

        monkeypatch.setattr(sources[0][0].client, "parse_unchanged", counting_reparse)
        for seed in range(4):
            await _run_sequence(random.Random(seed), fakes, sources, two_stores, seed)
        skipped = sample(sources[0][1], "stocksync_keycrm_scan_pages_unchanged_total")
        assert skipped > 40  # the skip did happen, often
        assert sample(sources[1][1], "stocksync_keycrm_scan_pages_unchanged_total") == 0
        assert fallbacks  # and a page with a record changed since was parsed after all


#: what a step does, weighted by repetition
KINDS = (
    *("scan", "scan", "scan", "scan", "edit", "insert", "delete", "rename"),
    *("duplicate", "duplicate", "undouble", "undouble"),
    *("lookup", "lookup_revert", "failed", "incomplete", "mid_scan_edit"),
)


async def _run_sequence(
    rng: random.Random,
    fakes: tuple[Keycrm, Keycrm],
    sources: list[tuple[Source, MerchantMetrics]],
    stores: tuple[Store, Store],
    seed: int,
) -> None:
    base = 1 + seed * 1000
    for fake in fakes:
        fake.offers.clear()
        for index in range(base, base + 320, 2):  # 160 offers, every other id free for inserts
            fake.add(offer(index))
    for step in range(36):
        live = sorted(fakes[0].offers)
        kind = rng.choice(KINDS)
        target = rng.choice(live)
        quantity = float(rng.randint(0, 9))
        free = next(i for i in range(target // 10 + 1, target // 10 + 40) if i * 10 not in live)
        anywhere = rng.choice([i for i in range(base, base + 320) if i * 10 not in live])
        skus = [fakes[0].offers[i].sku for i in live]
        doubled = [i for i in live if skus.count(fakes[0].offers[i].sku) > 1]
        for fake in fakes:
            one = fake.offers[target]
            if kind == "edit":
                one.stock = {1: (quantity, 0.0)}
            elif kind == "insert":
                fake.add(offer(free, quantity=quantity))
            elif kind == "delete" and len(live) > 10:
                del fake.offers[target]
            elif kind == "duplicate":  # anywhere: often on another page than the first
                fake.add(offer(anywhere, sku=one.sku, quantity=quantity))
            elif kind == "undouble" and doubled:  # the first offer of a doubled SKU renamed
                fake.offers[doubled[0]].sku = f"U{free:04d}"
            elif kind == "rename":
                one.sku = f"R{free:04d}"
            elif kind == "failed":
                fake.fail_page = 2
            elif kind == "incomplete":
                fake.paging_lie = "total_drift"
            elif kind == "mid_scan_edit":
                fake.before_page[2] = lambda one=one, q=quantity: setattr(one, "stock", {1: (q, 0)})
        sku = fakes[0].offers[target].sku if target in fakes[0].offers else None
        for fake, (source, _) in zip(fakes, sources, strict=True):
            if kind in ("lookup", "lookup_revert") and sku is not None:
                before = fake.offers[target].stock
                fake.offers[target].stock = {1: (quantity, 0.0)}
                await source.look_up([sku])
                if kind == "lookup_revert":
                    fake.offers[target].stock = before
            if kind in ("scan", "failed", "incomplete", "mid_scan_edit", "lookup_revert"):
                try:
                    await source.scan_once()
                except SourceError:
                    assert kind != "mid_scan_edit"
            fake.fail_page, fake.paging_lie = None, None
        one_state, other_state = await dump(stores[0]), await dump(stores[1])
        assert _comparable(one_state) == _comparable(other_state), (seed, step, kind)


def _comparable(state: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    return {sku: row[:3] for sku, row in state.items()}
