"""Properties of every parser of outside input: any input is a valid result or a clear error.

Outside input is keyCRM's pages, keyCRM's webhook bodies and the operator's config file. For
each, hypothesis throws arbitrary and nearly-valid documents at the parser; the only exceptions
allowed are the parser's own (`MalformedPage`, `ValueError`, `ConfigError`), and what comes
back must be usable downstream (finite, bounded numbers; non-empty SKUs; one-line faults).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters import ADAPTERS
from daemon.config.settings import load_config
from daemon.core.errors import ConfigError
from daemon.keycrm.payloads import MAX_NUMBER, MalformedPage, parse_catalog_page, parse_stock_page
from daemon.shell.http import MAX_SKU_LENGTH, parse_webhook

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- JSON in general and keyCRM's shapes in particular --------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
anything = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=True, allow_infinity=True).map(str)
    | st.sampled_from(["1e999999999", "-1E+99999", "NaN", "sNaN", "Infinity", " 5 ", "1_0", "0x1"])
)


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right kind of value, sometimes anything at all."""
    return st.one_of(good, good, anything)


def corrupt(value: Any, pick: int, junk: Any) -> Any:
    """The document with one of its values (chosen by `pick`) replaced by `junk`."""
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        keys = (
            range(len(node))
            if isinstance(node, list)
            else list(node)
            if isinstance(node, dict)
            else []
        )
        for key in keys:
            slots.append((node, key))
            walk(node[key])

    value = json.loads(json.dumps(value))  # a private copy
    walk(value)
    if slots:
        node, key = slots[pick % len(slots)]
        node[key] = junk
    return value


def with_one_fault(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid documents, and valid documents with one value replaced by anything."""
    corrupted = st.builds(corrupt, valid, st.integers(0, 10_000), anything)
    return st.one_of(valid, corrupted, corrupted)


good_numbers = (
    st.integers(-1000, 10**6)
    | st.floats(-1000, 10**6, allow_nan=False)
    | st.decimals(-1000, 10**6, allow_nan=False, places=3).map(str)
)
good_offer = st.fixed_dictionaries(
    {
        "id": st.integers(1, 2**40),
        "sku": st.text(max_size=10) | st.none() | st.integers(0, 10**12),
        "quantity": good_numbers,
        "reserve": good_numbers,
        "price": good_numbers | st.none(),
    },
    optional={
        "warehouse": st.lists(
            st.fixed_dictionaries(
                {"id": st.integers(1, 9), "quantity": good_numbers, "reserve": good_numbers}
            ),
            max_size=3,
        ),
        "barcode": st.text(max_size=14) | st.integers(0, 10**13) | st.none(),
        "product_id": st.integers(1, 2**40) | st.none(),
        "product": st.fixed_dictionaries({"name": st.text(max_size=10) | st.none()}) | st.none(),
        "properties": st.lists(
            st.fixed_dictionaries({"name": st.text(max_size=6), "value": leaves}), max_size=3
        ),
    },
)
good_page = st.fixed_dictionaries(
    {
        "data": st.lists(good_offer, max_size=4),
        "current_page": st.integers(1, 5),
        "last_page": st.integers(1, 5),
        "next_page_url": st.none() | st.just("https://openapi.keycrm.app/v1/offers/stocks?page=2"),
        "total": st.integers(0, 500),
    }
)
page = with_one_fault(good_page) | st.sampled_from(
    [{"data": [{"id": 1, "sku": "A", "quantity": n}]} for n in
     ("1e999999999", "-1E+99999", "NaN", "sNaN", "Infinity", " 5 ", "1_0", "0x1", "9" * 200)]
)  # fmt: skip


def usable(number: Decimal | None) -> None:
    if number is None:
        return
    assert number.is_finite() and abs(number) <= MAX_NUMBER
    int(number.to_integral_value(rounding=ROUND_FLOOR))  # cheap: a bounded number of digits


@PROPERTY
@given(body=st.one_of(anything, page, page))
def test_a_stock_page_parses_whole_or_is_malformed(body: Any) -> None:
    try:
        parsed = parse_stock_page(body)
    except MalformedPage as exc:
        event("malformed")
        problem = str(exc)
        assert problem
        return
    event(f"parsed, {'some' if parsed.items else 'no'} items")
    for level in parsed.items:
        assert level.sku and level.sku == level.sku.strip()
        assert -(2**63) < level.offer_id < 2**63
        for number in (level.quantity, level.reserve, level.price):
            usable(number)
        for stock in level.warehouses or ():
            usable(stock.quantity)
            usable(stock.reserve)
    assert parsed.total is None or isinstance(parsed.total, int)


@PROPERTY
@given(body=st.one_of(anything, page, page))
def test_a_catalog_page_parses_whole_or_is_malformed(body: Any) -> None:
    try:
        parsed = parse_catalog_page(body)
    except MalformedPage as exc:
        event("malformed")
        problem = str(exc)
        assert problem
        return
    event(f"parsed, {'some' if parsed.items else 'no'} items")
    for entry in parsed.items:
        assert entry.sku and entry.sku == entry.sku.strip()
        assert all(isinstance(n, str) and isinstance(v, str) for n, v in entry.properties)


# --- keyCRM's webhook --------------------------------------------------------------------------

change = st.fixed_dictionaries(
    {},
    optional={
        "offer_id": maybe(st.integers()),
        "sku": maybe(st.text(max_size=300) | st.integers() | st.floats()),
        "in_stock": maybe(numbers),
        "in_reserve": maybe(numbers),
    },
)


good_change = st.fixed_dictionaries(
    {"offer_id": st.integers(1, 10**6), "sku": st.text(min_size=1, max_size=30)},
    optional={"in_stock": good_numbers, "in_reserve": good_numbers},
)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # also integers past 64 bits, as a server might send


@PROPERTY
@given(
    body=st.one_of(
        st.binary(max_size=64),
        anything.map(dumps),
        st.lists(change, max_size=5).map(dumps),
        change.map(dumps),
        with_one_fault(st.lists(good_change, min_size=1, max_size=5)).map(dumps),
        with_one_fault(st.lists(good_change, min_size=1, max_size=5)).map(dumps),
    )
)
def test_a_webhook_body_is_skus_or_a_reason(body: bytes) -> None:
    try:
        skus = parse_webhook(body)
    except ValueError as exc:
        event("refused")
        reason = str(exc)
        assert reason and "\n" not in reason
        return
    event("accepted")
    assert skus
    assert all(s and s == s.strip() and len(s) <= MAX_SKU_LENGTH for s in skus)


# --- the config file ---------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "daemon": {"state": "state.db", "listen": "127.0.0.1:0", "admin_token_env": "P_ADMIN"},
    "keycrm": {"api_key_env": "P_KEY", "webhook_token_env": "P_HOOK"},
    "sync": {"debounce": "1s"},
    "channel": [
        {
            "name": "pos",
            "type": "inventory_api",
            "base_url": "https://pos.example.com",
            "token_env": "P_POS",
            "store": "3",
        },
        {"name": "kl", "type": "klump", "secret_key_env": "P_KL", "rate_limit": "5/s"},
    ],
}
KEYS = {
    "daemon": ["state", "listen", "log_format", "log_level", "shutdown_timeout",
               "history_retention", "admin_token_env", "admin_token_file", "extra"],
    "keycrm": ["base_url", "api_key_env", "api_key_file", "requests_per_minute", "poll_interval",
               "catalog_interval", "timeout", "webhook_token_env", "webhook_token_file"],
    "sync": ["debounce", "max_delay", "guard_fraction", "resync_interval"],
    "channel": ["name", "type", "key", "key_map", "buffer", "cap", "warehouses",
                "subtract_reserve", "concurrency", "rate_limit", "timeout", "batch_size",
                "base_url", "token_env", "token_file", "match", "store", "store_map",
                "secret_key_env", "sync_price", "api_key_env", "public_id", "sig_field",
                "hash_key_env", "live_threshold", "seller_map", "api"],
}  # fmt: skip
toml_leaves = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.from_regex(r"\A\d{1,40}(\.\d{1,4})?(ms|s|m|h|d)\Z")
    | st.from_regex(r"\A\d{1,40}(\.\d{1,4})?/(s|m|h)\Z")
    | st.sampled_from(["pos", "kl", "P_KEY", "127.0.0.1:99999", "[::1]:0", "upc", "x" * 500])
)
toml_values = st.recursive(
    toml_leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


durations = st.from_regex(r"\A[1-9][0-9]{0,2}(ms|s|m|h)\Z")
GOOD_VALUES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "daemon": {
        "log_format": st.sampled_from(["json", "console"]),
        "log_level": st.sampled_from(["debug", "info", "warning", "error"]),
        "shutdown_timeout": st.from_regex(r"\A[1-9][0-9]?s\Z"),
        "history_retention": durations,
    },
    "keycrm": {
        "requests_per_minute": st.integers(1, 6000),
        "poll_interval": durations,
        "catalog_interval": durations,
        "timeout": st.from_regex(r"\A[1-9][0-9]?s\Z"),
    },
    "sync": {
        "debounce": st.from_regex(r"\A[0-9](ms|s)\Z"),
        "max_delay": st.from_regex(r"\A[1-9][0-9](s|m)\Z"),
        "guard_fraction": st.floats(0.01, 1.0),
        "resync_interval": durations,
    },
    "channel": {
        "buffer": st.integers(0, 100),
        "cap": st.integers(1, 1000),
        "warehouses": st.lists(st.integers(1, 9), max_size=3),
        "subtract_reserve": st.booleans(),
        "concurrency": st.integers(1, 64),
        "rate_limit": st.from_regex(r"\A[1-9][0-9]{0,2}/(s|m)\Z"),
        "timeout": st.from_regex(r"\A[1-9][0-9]?s\Z"),
    },
}


def varied(table: dict[str, Any], section: str) -> st.SearchStrategy[dict[str, Any]]:
    """The table with some of its keys set to other valid values."""
    changes = st.fixed_dictionaries({}, optional=GOOD_VALUES[section])
    return changes.map(lambda c: {**table, **c})


valid_documents = st.fixed_dictionaries(
    {
        "daemon": varied(BASE["daemon"], "daemon"),
        "keycrm": varied(BASE["keycrm"], "keycrm"),
        "sync": varied(BASE["sync"], "sync"),
        "channel": st.lists(
            st.sampled_from(BASE["channel"]).flatmap(lambda t: varied(t, "channel")),
            min_size=1,
            max_size=3,
            unique_by=lambda table: str(table["name"]),
        ),
    }
)
extra_keys = st.tuples(
    st.sampled_from(["daemon", "keycrm", "sync", "channel", "other"]),
    st.sampled_from([k for keys in KEYS.values() for k in keys]),
    toml_values,
)


def with_extra(document: dict[str, Any], extra: tuple[str, str, Any]) -> dict[str, Any]:
    """The document with one more key set to any value, in a section or a channel."""
    section, key, value = extra
    target = document.setdefault(section, {})
    if isinstance(target, list):
        target = target[0] if target else {}
    target[key] = value
    return document


documents = st.one_of(
    valid_documents,
    st.builds(corrupt, valid_documents, st.integers(0, 10_000), toml_values),
    st.builds(with_extra, valid_documents, extra_keys),
)


def toml(value: Any) -> str:
    """A TOML rendering of the value (inline tables for nested ones)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # TOML refuses JSON's surrogate pairs
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


def toml_document(document: dict[str, Any]) -> str:
    """Top-level keys first, then `[section]` tables and `[[channel]]` array tables."""
    lines: list[str] = []
    tables: list[str] = []

    def table(header: str, entries: dict[str, Any]) -> None:
        tables.append(header)
        tables.extend(f"{json.dumps(k)} = {toml(v)}" for k, v in entries.items())

    for name, value in document.items():
        if isinstance(value, dict):
            table(f"[{json.dumps(name)}]", value)
        elif isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            for entry in value:
                table(f"[[{json.dumps(name)}]]", entry)
        else:
            lines.append(f"{json.dumps(name)} = {toml(value)}")
    return "\n".join(lines + tables) + "\n"


@pytest.fixture(scope="module")
def _secrets() -> Iterator[None]:
    names = ("P_ADMIN", "P_KEY", "P_HOOK", "P_POS", "P_KL")
    before = {n: os.environ.get(n) for n in names}
    os.environ.update({n: f"{n.lower()}-value-0123" for n in names})
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.usefixtures("_secrets")
@PROPERTY
@given(document=documents)
def test_a_config_loads_or_says_what_is_wrong_one_line_each(
    document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("config") / "stocksync.toml"
    path.write_text(toml_document(document), encoding="utf-8")
    try:
        config = load_config(path, ADAPTERS)
    except ConfigError as exc:
        event("faults")
        faults = exc.faults
        assert faults
        for key, problem in faults:
            assert key and problem
            assert "\n" not in key + problem and len(key) + len(problem) < 700
        return
    event("loaded")
    assert config.channels
    for channel in config.channels:
        assert math.isfinite(channel.rate) and channel.rate > 0
        assert math.isfinite(channel.timeout) and channel.timeout <= 3600
    assert math.isfinite(config.keycrm.poll_interval)
