"""What each channel does beyond the shared contract, against its fake over real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from adapters import ADAPTERS
from adapters.marketplacer import MarketplacerChannel, MarketplacerSettings
from adapters.ordergroove import OrdergrooveChannel, signature
from daemon.core.channel import Channel, ChannelContext, Readable, readable
from daemon.core.errors import ChannelFatal, ChannelRetryable
from daemon.core.models import ItemValue, Outcome, Value, join_key
from daemon.simulator import (
    FakeInventoryApi,
    FakeKlump,
    FakeMarketplacer,
    FakeOrdergroove,
    variant_id,
)
from tests.conftest import Serve

pytestmark = pytest.mark.anyio


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def build(
    type_name: str,
    options: dict[str, Any],
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> Channel:
    spec = ADAPTERS[type_name]
    settings = spec.settings.model_validate(options)
    return spec.build(settings, ChannelContext("test", session, 5.0))


# --- Klump -----------------------------------------------------------------------------------


async def test_klump_409_means_already_treated(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeKlump("k-secret-1234")
    monkeypatch.setenv("T_KLUMP", "k-secret-1234")
    channel = build(
        "klump",
        {"base_url": await serve(fake.app()), "secret_key_env": "T_KLUMP"},
        session,
        monkeypatch,
    )
    fake.faults.add(409, body=b'{"status": "error", "message": "conflict"}')
    (result,) = await channel.push([ItemValue("Shirt", Value(quantity=2, price=Decimal(10)))])
    assert result.outcome is Outcome.ACKNOWLEDGED


async def test_klump_200_with_an_error_is_retried_with_its_message(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeKlump("k-secret-1234")
    monkeypatch.setenv("T_KLUMP", "k-secret-1234")
    channel = build(
        "klump",
        {"base_url": await serve(fake.app()), "secret_key_env": "T_KLUMP"},
        session,
        monkeypatch,
    )
    fake.faults.fail_in_body("product update queue is full")
    with pytest.raises(ChannelRetryable, match="queue is full") as caught:
        await channel.push([ItemValue("Shirt", Value(quantity=2, price=Decimal(10)))])
    assert caught.value.status == 200
    assert fake.products == {}


async def test_inventory_api_empty_200_is_acknowledged_as_documented(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API documents no success body: an empty 200 is done, a 200 with `error` is not.
    fake = FakeInventoryApi("pos-token-1234")
    monkeypatch.setenv("T_POS", "pos-token-1234")
    options = {"base_url": await serve(fake.app()), "token_env": "T_POS", "store": "3"}
    channel = build("inventory_api", options, session, monkeypatch)
    item = ItemValue(join_key(("849632048260", "3")), Value(quantity=12))
    fake.faults.add(0, body=b"")
    assert [r.outcome for r in await channel.push([item])] == [Outcome.ACKNOWLEDGED]
    fake.faults.add(0, body=b'{"error": "Missing required field: sku"}')
    with pytest.raises(ChannelRetryable, match="Missing required field"):
        await channel.push([item])


async def test_klump_without_price_sync_sends_no_price(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeKlump("k-secret-1234")
    monkeypatch.setenv("T_KLUMP", "k-secret-1234")
    options = {
        "base_url": await serve(fake.app()),
        "secret_key_env": "T_KLUMP",
        "sync_price": False,
    }
    channel = build("klump", options, session, monkeypatch)
    await channel.push([ItemValue("Shirt", Value(quantity=2))])
    assert fake.requests == [{"name": "Shirt", "quantity": 2}]


# --- Marketplacer ------------------------------------------------------------------------------


async def marketplacer(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[FakeMarketplacer, Channel]:
    basic = options.pop("fake_basic", None)
    fake = FakeMarketplacer("mp-key-123456", basic=basic)
    monkeypatch.setenv("T_MP", "mp-key-123456")
    channel = build(
        "marketplacer",
        {"base_url": await serve(fake.app()), "api_key_env": "T_MP", **options},
        session,
        monkeypatch,
    )
    return fake, channel


async def test_marketplacer_sends_a_batch_as_one_aliased_document(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch)
    fake.known = {variant_id(1), variant_id(3)}
    items = [ItemValue(variant_id(n), Value(quantity=n)) for n in (1, 2, 3)]
    results = await channel.push(items)
    assert [r.outcome for r in results] == [
        Outcome.ACKNOWLEDGED,
        Outcome.REJECTED,
        Outcome.ACKNOWLEDGED,
    ]
    assert "variantId: not found" in (results[1].reason or "")
    (document,) = fake.documents
    assert document["variables"]["i2"] == {
        "variantId": variant_id(3),
        "attributes": {"countOnHand": 3},
    }


async def test_marketplacer_an_alias_error_retries_unless_its_code_blames_the_input(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch)
    items = [ItemValue(variant_id(n), Value(quantity=n)) for n in (1, 2)]
    body = {
        "data": {"i0": None, "i1": None},
        "errors": [
            {"message": "database is locked", "path": ["i0"]},
            {"message": "no such variant", "path": ["i1"], "extensions": {"code": "NOT_FOUND"}},
        ],
    }
    fake.faults.add(0, body=orjson.dumps(body))
    first, second = await channel.push(items)
    assert (first.outcome, second.outcome) == (Outcome.RETRY, Outcome.REJECTED)
    assert "database is locked" in (first.reason or "")
    # a 200 naming no alias and no error, without the updated variant: not done either
    fake.faults.add(0, body=b'{"data": {"i0": {"variant": null, "errors": []}}}')
    (result,) = await channel.push(items[:1])
    assert result.outcome is Outcome.RETRY


async def test_marketplacer_missing_scope_is_fatal(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch)
    fake.scope_ok = False
    with pytest.raises(ChannelFatal, match="MISSING_SCOPE"):
        await channel.push([ItemValue(variant_id(1), Value(quantity=1))])


async def test_marketplacer_waits_at_least_60s_without_retry_after(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch)
    fake.faults.add(503)
    with pytest.raises(ChannelRetryable) as caught:
        await channel.push([ItemValue(variant_id(1), Value(quantity=1))])
    assert caught.value.retry_after == 60


async def test_marketplacer_bearer_and_basic_auth_in_front(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bearer = await marketplacer(serve, session, monkeypatch, auth_header="bearer")
    assert (await bearer.push([ItemValue(variant_id(1), Value(quantity=1))]))[
        0
    ].outcome is Outcome.ACKNOWLEDGED
    monkeypatch.setenv("T_USER", "staging")
    monkeypatch.setenv("T_PASS", "hunter22")
    fake, basic = await marketplacer(
        serve,
        session,
        monkeypatch,
        basic_user_env="T_USER",
        basic_password_env="T_PASS",
        fake_basic=("staging", "hunter22"),
    )
    assert (await basic.push([ItemValue(variant_id(1), Value(quantity=4))]))[
        0
    ].outcome is Outcome.ACKNOWLEDGED
    assert fake.count_on_hand == {variant_id(1): 4}


async def test_marketplacer_rest_sets_every_seller_of_a_variant_in_one_put(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(
        serve, session, monkeypatch, api="rest", seller_map={"1": 11, "2": 12}
    )
    items = [
        ItemValue(join_key(("7137", "11")), Value(quantity=5)),
        ItemValue(join_key(("7137", "12")), Value(quantity=0)),
    ]
    results = await channel.push(items)
    assert [r.outcome for r in results] == [Outcome.ACKNOWLEDGED] * 2
    assert fake.inventories == {("7137", 11): 5, ("7137", 12): 0}  # an explicit 0, not left out


def reader_of(channel: Channel) -> Readable:
    found = readable(channel)
    assert found is not None
    return found


async def test_marketplacer_reads_a_batch_as_one_nodes_document(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch)
    await channel.push([ItemValue(variant_id(n), Value(quantity=n)) for n in (1, 2)])
    keys = [variant_id(1), variant_id(2), variant_id(3)]
    assert await reader_of(channel).read(keys) == {
        variant_id(1): Value(quantity=1),
        variant_id(2): Value(quantity=2),
        variant_id(3): None,
    }
    assert len(fake.reads) == 1
    assert fake.documents[-1]["variables"] == {"ids": keys}


async def test_marketplacer_read_error_on_one_node_leaves_only_it_unreadable(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch)
    answer = {
        "data": {"nodes": [{"id": variant_id(1), "countOnHand": 3}, None, {}]},
        "errors": [{"message": "Internal error", "path": ["nodes", 1]}],
    }
    fake.faults.add(0, body=orjson.dumps(answer))
    values = await reader_of(channel).read([variant_id(n) for n in (1, 2, 3)])
    # node 1 failed: unreadable (left out); node 2 is something other than a variant: missing
    assert values == {variant_id(1): Value(quantity=3), variant_id(3): None}


async def test_marketplacer_read_without_scope_is_fatal(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch)
    fake.scope_ok = False
    with pytest.raises(ChannelFatal, match="MISSING_SCOPE"):
        await reader_of(channel).read([variant_id(1)])


async def test_marketplacer_read_of_a_short_nodes_list_is_retryable(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch)
    fake.faults.add(0, body=orjson.dumps({"data": {"nodes": [None]}}))
    with pytest.raises(ChannelRetryable, match="do not match"):
        await reader_of(channel).read([variant_id(1), variant_id(2)])


async def test_marketplacer_rest_read_one_request_per_variant_and_infinite_is_unreadable(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(
        serve, session, monkeypatch, api="rest", seller_map={"1": 11, "2": 12}
    )
    reader = reader_of(channel)
    assert reader.max_read_batch == 1
    infinite = {
        "data": [
            {
                "id": 1,
                "type": "inventories",
                "attributes": {"count_on_hand": 0, "infinite": True, "seller_id": 11},
            }
        ]
    }
    fake.faults.add(0, body=orjson.dumps(infinite))
    assert await reader.read([join_key(("7137", "11"))]) == {}


async def test_marketplacer_rest_read_without_sellers(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await marketplacer(serve, session, monkeypatch, api="rest")
    await channel.push([ItemValue("7137", Value(quantity=5))])
    fake.edit_by_hand("7137", 2)
    assert await reader_of(channel).read(["7137", "7138"]) == {
        "7137": Value(quantity=2),
        "7138": None,
    }


# --- Ordergroove -------------------------------------------------------------------------------


PUBLIC_ID = "39bkas893740ng49023u0m23049209n2"


async def ordergroove(
    serve: Serve,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    clock: Any = time.time,
) -> tuple[FakeOrdergroove, OrdergrooveChannel]:
    fake = FakeOrdergroove("og-hash-key-1234")
    monkeypatch.setenv("T_OG", "og-hash-key-1234")
    spec = ADAPTERS["ordergroove"]
    settings = spec.settings.model_validate(
        {
            "base_url": await serve(fake.app()),
            "public_id": PUBLIC_ID,
            "sig_field": "api_user",
            "hash_key_env": "T_OG",
        }
    )
    return fake, OrdergrooveChannel(settings, ChannelContext("og", session, 5.0), clock=clock)  # type: ignore[arg-type]


def test_ordergroove_signature_matches_the_documented_construction() -> None:
    # base64(HMAC-SHA256(key, "sig_field|ts")), the construction of Ordergroove's JS example
    assert (
        signature("key", "test_user", 1488466536) == "uiusljRK9SsKXzM+9ftX0I9oWkrtGbWbL6Yma+rqrxk="
    )


async def test_ordergroove_signs_each_request_afresh(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [time.time()]
    fake, channel = await ordergroove(serve, session, monkeypatch, clock=lambda: now[0])
    await channel.push([ItemValue("P-1", Value(live=True))])
    now[0] += 5
    await channel.push([ItemValue("P-1", Value(live=False))])
    assert fake.timestamps[1] - fake.timestamps[0] == 5
    assert fake.live == {"P-1": False}


async def test_ordergroove_stale_signature_is_refused_as_fatal(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, channel = await ordergroove(
        serve, session, monkeypatch, clock=lambda: time.time() - 3 * 3600
    )
    with pytest.raises(ChannelFatal, match="expired"):
        await channel.push([ItemValue("P-1", Value(live=True))])


async def test_ordergroove_reads_both_documented_answer_shapes(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await ordergroove(serve, session, monkeypatch)
    fake.guide_shape = True
    fake.known = {"P-1"}
    results = await channel.push(
        [ItemValue("P-1", Value(live=True)), ItemValue("P-9", Value(live=True))]
    )
    assert [r.outcome for r in results] == [Outcome.ACKNOWLEDGED, Outcome.REJECTED]


async def test_ordergroove_x_api_key_scope(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeOrdergroove("unused-hash-key")
    fake.api_key = "app-key-98765"
    monkeypatch.setenv("T_OGK", "app-key-98765")
    channel = build(
        "ordergroove",
        {"base_url": await serve(fake.app()), "api_key_env": "T_OGK"},
        session,
        monkeypatch,
    )
    (result,) = await channel.push([ItemValue("P-1", Value(live=True))])
    assert result.outcome is Outcome.ACKNOWLEDGED


async def test_ordergroove_reads_one_product_per_request_with_either_scope(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await ordergroove(serve, session, monkeypatch)
    await channel.push([ItemValue("P-1", Value(live=True)), ItemValue("P 2", Value(live=False))])
    values = await channel.read(["P-1", "P 2", "P-3"])
    assert values == {"P-1": Value(live=True), "P 2": Value(live=False), "P-3": None}
    assert len(fake.reads) == 3  # one GET per product, the unknown one answered 404
    fake.api_key = "app-key-98765"
    monkeypatch.setenv("T_OGK", "app-key-98765")
    app_scope = build(
        "ordergroove",
        {"base_url": channel._settings.base_url, "api_key_env": "T_OGK"},
        session,
        monkeypatch,
    )
    assert await reader_of(app_scope).read(["P-1"]) == {"P-1": Value(live=True)}


async def test_ordergroove_read_without_a_live_flag_is_unreadable(
    serve: Serve, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, channel = await ordergroove(serve, session, monkeypatch)
    fake.faults.add(0, body=b'{"external_product_id": "P-1", "live": null}')
    assert await channel.read(["P-1"]) == {}


def test_ordergroove_needs_one_complete_auth_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("T_OG", "x" * 12)
    spec = ADAPTERS["ordergroove"]
    with pytest.raises(ValidationError, match="public_id, sig_field and hash_key_env"):
        spec.settings.model_validate({"hash_key_env": "T_OG"})
    with pytest.raises(ValidationError, match="not both"):
        spec.settings.model_validate(
            {
                "api_key_env": "T_OG",
                "public_id": PUBLIC_ID,
                "sig_field": "u",
                "hash_key_env": "T_OG",
            }
        )


async def test_a_marketplacer_probe_sees_a_key_without_scope(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeMarketplacer("mp-scope-key-0123")
    fake.scope_ok = False
    url = await serve(fake.app())
    monkeypatch.setenv("T_MP", fake.api_key)
    settings = MarketplacerSettings.model_validate({"base_url": url, "api_key_env": "T_MP"})
    async with aiohttp.ClientSession() as session:
        channel = MarketplacerChannel(settings, ChannelContext("mp", session, 5.0))
        probe = await channel.probe()
    assert (probe.ok, probe.verdict) == (False, "auth refused")
    assert "MISSING_SCOPE" in probe.detail
