from decimal import Decimal

import pytest

from daemon.core.models import (
    CatalogEntry,
    StockLevel,
    StockRecord,
    Value,
    WarehouseStock,
    split_key,
)
from daemon.rules.plan import Rules, compile_template, plan


def record(
    sku: str,
    quantity: str,
    reserve: str = "0",
    *,
    name: str | None = "Shirt",
    barcode: str | None = "400",
    price: str | None = "10",
    warehouses: dict[int, tuple[str, str]] | None = None,
    props: tuple[tuple[str, str], ...] = (("Size", "M"),),
) -> StockRecord:
    return StockRecord(
        StockLevel(
            sku=sku,
            offer_id=hash(sku) % 10000,
            quantity=Decimal(quantity),
            reserve=Decimal(reserve),
            price=None if price is None else Decimal(price),
            warehouses=None
            if warehouses is None
            else tuple(
                WarehouseStock(k, Decimal(q), Decimal(r)) for k, (q, r) in warehouses.items()
            ),
        ),
        CatalogEntry(sku, 1, product_id=7, product_name=name, barcode=barcode, properties=props),
    )


def rules(*templates: str, **kwargs: object) -> Rules:
    return Rules(key_parts=tuple(compile_template(t) for t in templates), **kwargs)  # type: ignore[arg-type]


def test_reserve_is_subtracted_and_fractions_floored() -> None:
    result = plan([record("A", "10.7", "2")], rules("{sku}"))
    assert result.items == {"A": Value(quantity=8)}


def test_reserve_kept_when_asked() -> None:
    result = plan([record("A", "10", "2")], rules("{sku}", subtract_reserve=False))
    assert result.items == {"A": Value(quantity=10)}


def test_buffer_floor_at_zero_and_cap() -> None:
    assert plan([record("A", "3")], rules("{sku}", buffer=5)).items == {"A": Value(quantity=0)}
    assert plan([record("A", "30")], rules("{sku}", cap=12)).items == {"A": Value(quantity=12)}
    assert plan([record("A", "1", "4")], rules("{sku}")).items == {"A": Value(quantity=0)}


def test_variants_sharing_a_key_add_up_and_lowest_price_wins() -> None:
    records = [
        record("A", "2", price="15"),
        record("B", "3", price="12"),
        record("C", "1", name="Hat"),
    ]
    result = plan(records, rules("{product_name}", price=True))
    assert result.items == {
        "Shirt": Value(quantity=5, price=Decimal("12")),
        "Hat": Value(quantity=1, price=Decimal("10")),
    }


def test_price_left_out_unless_the_channel_takes_it() -> None:
    assert plan([record("A", "2")], rules("{sku}")).items["A"].price is None


def test_empty_key_fields_skip_the_record_and_are_counted() -> None:
    result = plan([record("A", "2", barcode=None), record("B", "1")], rules("{barcode}"))
    assert result.items == {"400": Value(quantity=1)}
    assert result.skipped == {"empty_key": 1}


def test_key_map_and_unmapped_skus() -> None:
    result = plan([record("A", "2"), record("B", "1")], rules("{sku}", key_map={"A": "VmFy"}))
    assert result.items == {"VmFy": Value(quantity=2)}
    assert result.skipped == {"unmapped": 1}


def test_only_listed_warehouses_count() -> None:
    stock = {1: ("5", "1"), 2: ("7", "0"), 3: ("100", "0")}
    result = plan(
        [record("A", "112", "1", warehouses=stock)], rules("{sku}", warehouses=frozenset({1, 2}))
    )
    assert result.items == {"A": Value(quantity=11)}


def test_warehouse_rules_without_details_skip() -> None:
    result = plan([record("A", "5")], rules("{sku}", warehouses=frozenset({1})))
    assert result.skipped == {"no_warehouses": 1}


def test_store_map_gives_one_item_per_store_and_zero_for_an_absent_warehouse() -> None:
    stock = {1: ("5", "1"), 2: ("3", "0")}
    result = plan(
        [record("A", "8", "1", warehouses=stock)],
        rules("{barcode}", locations={1: "3", 2: "7", 9: "11"}),
    )
    assert {split_key(k): v for k, v in result.items.items()} == {
        ("400", "3"): Value(quantity=4),
        ("400", "7"): Value(quantity=3),
        ("400", "11"): Value(quantity=0),
    }


def test_live_threshold_turns_quantity_into_a_flag() -> None:
    r = rules("{sku}", live_threshold=2)
    assert plan([record("A", "3")], r).items == {"A": Value(live=True)}
    assert plan([record("A", "2")], r).items == {"A": Value(live=False)}


def test_templates_with_properties_and_literals() -> None:
    result = plan([record("A", "1")], rules("{sku}-{prop[Size]}"))
    assert result.items == {"A-M": Value(quantity=1)}


@pytest.mark.parametrize("template", ["{name}", "{sku", "plain", "{prop[]}"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="template|field|brace"):
        compile_template(template)


def test_value_encoding_is_canonical() -> None:
    assert (
        Value(quantity=1, price=Decimal("10.50")).encode()
        == Value(quantity=1, price=Decimal("10.5")).encode()
    )
    assert Value.decode(Value(quantity=3, live=True).encode()) == Value(quantity=3, live=True)
