"""The keyCRM client against the fake keyCRM over real HTTP: paging, filters, faults, budget."""

from __future__ import annotations

import socket

import aiohttp
import pytest
import structlog
from prometheus_client import CollectorRegistry

from daemon.config.settings import KeycrmSettings
from daemon.core.errors import SourceFatal, SourceRetryable
from daemon.core.telemetry import MerchantMetrics, Metrics
from daemon.keycrm.budget import RequestBudget
from daemon.keycrm.client import KeycrmClient
from daemon.simulator import FakeKeycrm, FakeOffer
from tests.conftest import Serve

pytestmark = pytest.mark.anyio

KEY = "kc-test-key-0123"


@pytest.fixture
def fake() -> FakeKeycrm:
    return FakeKeycrm(KEY)


@pytest.fixture
def metrics() -> MerchantMetrics:
    return Metrics(CollectorRegistry(), "test").for_merchant("default", [])


async def client_for(
    fake: FakeKeycrm,
    serve: Serve,
    session: aiohttp.ClientSession,
    metrics: MerchantMetrics,
    monkeypatch: pytest.MonkeyPatch,
    *,
    details: bool = False,
    budget: RequestBudget | None = None,
) -> KeycrmClient:
    url = await serve(fake.app())
    monkeypatch.setenv("T_KC", KEY)
    settings = KeycrmSettings.model_validate({"base_url": f"{url}/v1", "api_key_env": "T_KC"})
    return KeycrmClient(settings, session, budget or RequestBudget(6000), metrics, details=details)


def count(metrics: MerchantMetrics, kind: str, status: str) -> float:
    value = metrics.registry.get_sample_value(
        "stocksync_keycrm_requests_total", {"merchant": "default", "kind": kind, "status": status}
    )
    return value or 0.0


async def test_scan_reads_every_page_with_our_own_parameters(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(120, warehouses=(1, 2))
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch, details=True)
        skus = [level.sku async for page in client.scan() for level in page.items]
    assert skus == [f"SKU-{i:05d}" for i in range(1, 121)]
    pages = [query for _, path, query in fake.requests if path.endswith("/offers/stocks")]
    assert [q["page"] for q in pages] == ["1", "2", "3"]
    assert all(q["limit"] == "50" and q["filter[details]"] == "true" for q in pages)
    assert count(metrics, "scan", "200") == 3


async def test_a_short_page_does_not_end_the_scan(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(60)
    # keyCRM may return fewer rows than asked; only last_page says we are done.
    original = fake.stocks

    async def short_first_page(request):  # type: ignore[no-untyped-def]
        response = await original(request)
        if request.query.get("page") == "1":
            import orjson

            body = orjson.loads(response.body)
            body["data"] = body["data"][:10]
            response.body = orjson.dumps(body)
        return response

    fake.stocks = short_first_page  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        skus = [level.sku async for page in client.scan() for level in page.items]
    assert len(skus) == 20  # 10 from page 1, 10 from page 2: both pages were read


async def test_offers_without_sku_are_skipped_and_counted(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(3)
    fake.add(FakeOffer(id=9, sku=None, product_id=9, product_name="No SKU"))
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        skus = [level.sku async for page in client.scan() for level in page.items]
    assert len(skus) == 3
    assert (
        metrics.registry.get_sample_value(
            "stocksync_keycrm_offers_skipped_total", {"merchant": "default", "reason": "no_sku"}
        )
        == 1
    )


async def test_malformed_page_is_counted_retried_and_never_half_applied(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(5)
    fake.faults.add(
        0, body=b'{"data": [{"id": 1, "sku": "X", "quantity": "lots"}], "last_page": 1}'
    )
    fake.faults.add(0, body=b"<html>maintenance</html>")
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        pages = [page async for page in client.scan()]
    assert [len(p.items) for p in pages] == [5]
    assert count(metrics, "scan", "malformed") == 2


async def test_429_pauses_the_budget_and_is_retried(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(5)
    fake.faults.add(429, body=b'{"message": "Too Many Attempts."}', retry_after="1")
    budget = RequestBudget(6000)
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch, budget=budget)
        pages = [page async for page in client.scan()]
    assert len(pages[0].items) == 5
    assert count(metrics, "scan", "429") == 1
    assert budget._paused_until > 0


async def test_5xx_is_retried_but_a_bad_key_is_fatal(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(2)
    fake.faults.add(502, times=2)
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        assert len([p async for p in client.scan()]) == 1
        fake.api_key = "rotated"
        with pytest.raises(SourceFatal, match="401"):
            _ = [p async for p in client.scan()]
        fake.api_key = KEY
        fake.faults.add(500, times=10)
        with pytest.raises(SourceRetryable):
            _ = [p async for p in client.scan()]
    assert count(metrics, "scan", "502") == 2


async def test_lookups_ask_for_50_skus_a_request(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(120)
    wanted = [f"SKU-{i:05d}" for i in range(1, 121)] + ["no,comma"]
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        found = await client.lookup(wanted)
    assert len(found.levels) == 120
    assert found.dropped == {"bad_sku": ["no,comma"]}
    asked = [q["filter[offers_sku]"].split(",") for _, _, q in fake.requests]
    assert [len(a) for a in asked] == [50, 50, 20]


async def test_the_budget_keeps_keycrms_limit_in_every_window(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake keyCRM enforces 10 requests per 0.5 s and answers 429 past it: none may come."""
    fake.populate(50 * 25)
    fake.limit, fake.window = 10, 0.5
    budget = RequestBudget(10, window=0.5)
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch, budget=budget)
        pages = [page async for page in client.scan()]
    assert len(pages) == 25
    assert fake.refused == 0
    times = [t for t, _, _ in fake.requests]
    assert max(sum(1 for t in times if s <= t < s + 0.5) for s in times) <= 10


async def test_each_retry_is_logged_once_with_its_attempt(
    fake: FakeKeycrm, serve: Serve, metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.populate(2)
    fake.faults.add(502, times=2)
    async with aiohttp.ClientSession() as session:
        client = await client_for(fake, serve, session, metrics, monkeypatch)
        with structlog.testing.capture_logs() as logs:
            assert len([p async for p in client.scan()]) == 1
    # one line per failed request, ours: stamina's own hooks would add "stamina.retry_scheduled"
    assert [(e["event"], e.get("attempt")) for e in logs] == [
        ("keycrm.server_error", 1),
        ("keycrm.server_error", 2),
    ]


async def test_a_network_failure_names_the_host_and_the_reason(
    metrics: MerchantMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("T_KC", KEY)
    settings = KeycrmSettings.model_validate(
        {"base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": "T_KC"}
    )
    async with aiohttp.ClientSession() as session:
        client = KeycrmClient(settings, session, RequestBudget(6000), metrics, details=False)
        with pytest.raises(SourceRetryable) as caught:
            _ = [p async for p in client.scan()]
    assert str(caught.value) == f"keyCRM /offers/stocks: 127.0.0.1:{port}: connection refused"
