"""What the contract suite needs to drive one adapter against its fake. One entry per channel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from daemon.models import ItemValue, Value, join_key
from daemon.simulator import FakeInventoryApi


@dataclass
class Harness:
    """How to run the contract suite for one channel type."""

    type: str
    make_fake: Callable[[str], Any]  # secret -> fake server object with .app() and .faults
    options: Callable[[str, str], dict[str, Any]]  # (base_url, env var) -> adapter settings
    items: list[ItemValue]
    held: Callable[[Any, ItemValue], Value | None]  # what the fake holds for an item
    reject: Callable[[Any, ItemValue], None]  # make the fake refuse this item for good
    break_auth: Callable[[Any], None]

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


HARNESSES = [
    Harness(
        type="inventory_api",
        make_fake=FakeInventoryApi,
        options=lambda url, env: {"base_url": url, "token_env": env, "store": "3"},
        items=_inventory_items(),
        held=_inventory_held,
        reject=_inventory_reject,
        break_auth=_inventory_break,
    ),
]
