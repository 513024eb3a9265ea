"""What the contract suite needs to drive one adapter against its fake. One entry per channel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from daemon.core.models import ItemValue, Value, join_key
from daemon.simulator import (
    FakeInventoryApi,
    FakeKlump,
    FakeMarketplacer,
    FakeOrdergroove,
    variant_id,
)


@dataclass
class Harness:
    """How to run the contract suite for one channel type (or one mode of it)."""

    id: str
    type: str
    make_fake: Callable[[str], Any]  # secret -> fake server object with .app() and .faults
    options: Callable[[str, str], dict[str, Any]]  # (base_url, env var) -> adapter settings
    items: list[ItemValue]
    held: Callable[[Any, ItemValue], Value | None]  # what the fake holds for an item
    reject: Callable[[Any, ItemValue], None]  # make the fake refuse this item for good
    break_auth: Callable[[Any], None]
    #: read-back: change an item on the fake "by hand" (None: the channel cannot be read)
    edit: Callable[[Any, ItemValue, Value], None] | None = None
    #: keys the fake has never heard of, which a read must report as missing
    absent: list[str] = field(default_factory=list)

    def app(self, fake: Any) -> web.Application:
        app: web.Application = fake.app()
        return app


def _inventory_items() -> list[ItemValue]:
    return [
        ItemValue(join_key((f"40000000000{i}", "3")), Value(quantity=i * 2)) for i in range(1, 4)
    ]


def _inventory_held(fake: FakeInventoryApi, item: ItemValue) -> Value | None:
    upc, store = item.parts
    quantity = fake.quantity(upc, store)
    return None if quantity is None else Value(quantity=quantity)


def _inventory_reject(fake: FakeInventoryApi, item: ItemValue) -> None:
    everything = {i.parts[0] for i in _inventory_items()}
    fake.known = (fake.known if fake.known is not None else everything) - {item.parts[0]}


def _inventory_break(fake: FakeInventoryApi) -> None:
    fake.token = "revoked"


def _refuse(fake: Any, name: str, everything: set[str]) -> None:
    fake.known = (fake.known if fake.known is not None else everything) - {name}


KLUMP_ITEMS = [
    ItemValue("Shirt", Value(quantity=3, price=Decimal("1500"))),
    ItemValue("Hat", Value(quantity=0, price=Decimal("99.5"))),
    ItemValue("Scarf", Value(quantity=12, price=Decimal("20"))),
]


def _klump_held(fake: FakeKlump, item: ItemValue) -> Value | None:
    product = fake.products.get(item.key)
    if product is None:
        return None
    price = product["price"]
    return Value(quantity=product["quantity"], price=None if price is None else Decimal(str(price)))


def _klump_break(fake: FakeKlump) -> None:
    fake.secret_key = "revoked"


GRAPHQL_ITEMS = [ItemValue(variant_id(7000 + n), Value(quantity=n * 5)) for n in range(1, 4)]
REST_ITEMS = [
    ItemValue(join_key(("7137", "11")), Value(quantity=4)),
    ItemValue(join_key(("7138", "12")), Value(quantity=0)),
    ItemValue(join_key(("7139", "11")), Value(quantity=9)),
]


def _graphql_held(fake: FakeMarketplacer, item: ItemValue) -> Value | None:
    count = fake.count_on_hand.get(item.key)
    return None if count is None else Value(quantity=count)


def _rest_held(fake: FakeMarketplacer, item: ItemValue) -> Value | None:
    variant, seller = item.parts
    count = fake.inventories.get((variant, int(seller)))
    return None if count is None else Value(quantity=count)


def _graphql_edit(fake: FakeMarketplacer, item: ItemValue, value: Value) -> None:
    assert value.quantity is not None
    fake.edit_by_hand(item.key, value.quantity)


def _rest_edit(fake: FakeMarketplacer, item: ItemValue, value: Value) -> None:
    variant, seller = item.parts
    assert value.quantity is not None
    fake.edit_by_hand(variant, value.quantity, seller=int(seller))


def _marketplacer_break(fake: FakeMarketplacer) -> None:
    fake.api_key = "revoked"


ORDERGROOVE_ITEMS = [
    ItemValue("P-1", Value(live=True)),
    ItemValue("P-2", Value(live=False)),
    ItemValue("P-3", Value(live=True)),
]


def _ordergroove_held(fake: FakeOrdergroove, item: ItemValue) -> Value | None:
    live = fake.live.get(item.key)
    return None if live is None else Value(live=live)


def _ordergroove_edit(fake: FakeOrdergroove, item: ItemValue, value: Value) -> None:
    assert value.live is not None
    fake.edit_by_hand(item.key, value.live)


def _ordergroove_break(fake: FakeOrdergroove) -> None:
    fake.hash_key = "rotated"


HARNESSES = [
    Harness(
        id="inventory_api",
        type="inventory_api",
        make_fake=FakeInventoryApi,
        options=lambda url, env: {"base_url": url, "token_env": env, "store": "3"},
        items=_inventory_items(),
        held=_inventory_held,
        reject=_inventory_reject,
        break_auth=_inventory_break,
    ),
    Harness(
        id="klump",
        type="klump",
        make_fake=FakeKlump,
        options=lambda url, env: {"base_url": url, "secret_key_env": env},
        items=KLUMP_ITEMS,
        held=_klump_held,
        reject=lambda fake, item: _refuse(fake, item.key, {i.key for i in KLUMP_ITEMS}),
        break_auth=_klump_break,
    ),
    Harness(
        id="marketplacer-graphql",
        type="marketplacer",
        make_fake=FakeMarketplacer,
        options=lambda url, env: {"base_url": url, "api_key_env": env},
        items=GRAPHQL_ITEMS,
        held=_graphql_held,
        reject=lambda fake, item: _refuse(fake, item.key, {i.key for i in GRAPHQL_ITEMS}),
        break_auth=_marketplacer_break,
        edit=_graphql_edit,
        absent=[variant_id(9999)],
    ),
    Harness(
        id="marketplacer-rest",
        type="marketplacer",
        make_fake=FakeMarketplacer,
        options=lambda url, env: {
            "base_url": url,
            "api_key_env": env,
            "auth_header": "bearer",
            "api": "rest",
            "seller_map": {"1": 11, "2": 12},
        },
        items=REST_ITEMS,
        held=_rest_held,
        reject=lambda fake, item: _refuse(fake, item.parts[0], {i.parts[0] for i in REST_ITEMS}),
        break_auth=_marketplacer_break,
        edit=_rest_edit,
        # an unknown variant (404), and a seller with no record on a variant that exists
        absent=[join_key(("9999", "11")), join_key(("7137", "12"))],
    ),
    Harness(
        id="ordergroove",
        type="ordergroove",
        make_fake=FakeOrdergroove,
        options=lambda url, env: {
            "base_url": url,
            "public_id": "39bkas893740ng49023u0m23049209n2",
            "sig_field": "api_user",
            "hash_key_env": env,
        },
        items=ORDERGROOVE_ITEMS,
        held=_ordergroove_held,
        reject=lambda fake, item: _refuse(fake, item.key, {i.key for i in ORDERGROOVE_ITEMS}),
        break_auth=_ordergroove_break,
        edit=_ordergroove_edit,
        absent=["NO-SUCH-PRODUCT"],
    ),
]
