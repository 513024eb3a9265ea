"""Planning: keyCRM records to `{item key: value}` per channel. Pure functions, no I/O.

A record contributes an available quantity (and a price) to one or more item keys; the store
keeps each contribution, so when several offers map to one key (variants sharing a Klump product
name) the item's value is recomputed from all of them: quantities add up, the lowest price wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

import orjson

from daemon.core.models import StockRecord, Value, join_key
from daemon.rules.keymap import KeyMap

__all__ = [
    "PLAN_VERSION",
    "TEMPLATE_FIELDS",
    "Contribution",
    "PlanResult",
    "Rules",
    "Template",
    "combine",
    "compile_template",
    "contributions",
    "fingerprint",
    "plan",
]

TEMPLATE_FIELDS = ("sku", "offer_id", "barcode", "product_name", "product_id", "prop[NAME]")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_KNOWN = re.compile(r"^(sku|offer_id|barcode|product_name|product_id|prop\[[^\[\]]+\])$")
_ZERO = Decimal(0)

#: A compiled key template: literal text and field names, alternating, literal first.
Template = tuple[str, ...]


def compile_template(text: str) -> Template:
    """Split `"{sku}-{prop[Size]}"` into literals and fields; unknown fields are a ValueError."""
    pieces: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        name = match.group(1)
        if not _KNOWN.match(name):
            known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            raise ValueError(f"unknown field {{{name}}} in key template; known: {known}")
        pieces.extend((text[position : match.start()], name))
        position = match.end()
    rest = text[position:]
    if "{" in rest or "}" in rest:
        raise ValueError(f"unbalanced brace in key template {text!r}")
    if len(pieces) == 0:
        raise ValueError("key template names no field, so every item would get the same key")
    pieces.append(rest)
    return tuple(pieces)


def render(template: Template, record: StockRecord) -> str | None:
    """The template filled from the record, or None when a field it names is empty."""
    out: list[str] = []
    for index, piece in enumerate(template):
        if index % 2 == 0:
            out.append(piece)
            continue
        value = record.field(piece)
        if value is None or value.strip() == "":
            return None
        out.append(value)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Rules:
    """One channel's planning rules, built from its config and its adapter's `Shape`."""

    key_parts: tuple[Template, ...]
    key_map: Mapping[str, str] | None = None
    location: str | None = None
    locations: Mapping[int, str] | None = None
    warehouses: frozenset[int] = frozenset()
    subtract_reserve: bool = True
    buffer: int = 0
    cap: int | None = None
    price: bool = False
    live_threshold: int | None = None

    @property
    def needs_warehouses(self) -> bool:
        """Whether keyCRM must be asked for per-warehouse stock (`filter[details]=true`)."""
        return bool(self.warehouses) or self.locations is not None


@dataclass(frozen=True, slots=True)
class Contribution:
    """One record's share of one item: available units (not yet floored) and its price."""

    key: str
    quantity: Decimal
    price: Decimal | None


def _available(quantity: Decimal, reserve: Decimal, rules: Rules) -> Decimal:
    return quantity - reserve if rules.subtract_reserve else quantity


def _base_parts(record: StockRecord, rules: Rules) -> tuple[str, ...] | str:
    """The key parts before any location, or the reason the record has no key here."""
    if rules.key_map is not None:
        mapped = rules.key_map.get(record.sku)
        return "unmapped" if mapped is None else (mapped,)
    parts: list[str] = []
    for template in rules.key_parts:
        text = render(template, record)
        if text is None:
            return "empty_key"
        parts.append(text)
    return tuple(parts)


def contributions(record: StockRecord, rules: Rules) -> tuple[list[Contribution], str | None]:
    """What one record gives to this channel, or no contribution and the reason it is skipped."""
    base = _base_parts(record, rules)
    if isinstance(base, str):
        return [], base
    stock = record.stock
    price = stock.price if rules.price else None
    if rules.locations is not None:
        if stock.warehouses is None:
            return [], "no_warehouses"
        by_id = {w.id: w for w in stock.warehouses}
        out = []
        for warehouse_id, code in rules.locations.items():
            if rules.warehouses and warehouse_id not in rules.warehouses:
                continue
            w = by_id.get(warehouse_id)
            # A mapped warehouse keyCRM does not list holds nothing: say 0, not "no change".
            quantity = _ZERO if w is None else _available(w.quantity, w.reserve, rules)
            out.append(Contribution(join_key((*base, code)), quantity, price))
        return out, None
    if rules.warehouses:
        if stock.warehouses is None:
            return [], "no_warehouses"
        quantity = sum(
            (
                _available(w.quantity, w.reserve, rules)
                for w in stock.warehouses
                if w.id in rules.warehouses
            ),
            _ZERO,
        )
    else:
        quantity = _available(stock.quantity, stock.reserve, rules)
    parts = base if rules.location is None else (*base, rules.location)
    return [Contribution(join_key(parts), quantity, price)], None


def combine(shares: Iterable[Contribution], rules: Rules) -> Value:
    """The item's value from every record that maps to it: sum, floor, buffer, clamp, cap."""
    total = _ZERO
    price: Decimal | None = None
    for share in shares:
        total += share.quantity
        if share.price is not None and (price is None or share.price < price):
            price = share.price
    # Fractional stock (metres of fabric) is sold in whole units: floor, never round up.
    units = int(total.to_integral_value(rounding=ROUND_FLOOR)) - rules.buffer
    units = max(units, 0)
    if rules.cap is not None:
        units = min(units, rules.cap)
    if rules.live_threshold is not None:
        return Value(live=units > rules.live_threshold)
    return Value(quantity=units, price=price if rules.price else None)


@dataclass(slots=True)
class PlanResult:
    """A whole plan: every item's value, and how many records were skipped and why."""

    items: dict[str, Value] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)


def plan(records: Iterable[StockRecord], rules: Rules) -> PlanResult:
    """Plan a set of records at once (for tests and tools; the daemon plans per change)."""
    shares: dict[str, list[Contribution]] = {}
    result = PlanResult()
    for record in records:
        found, reason = contributions(record, rules)
        if reason is not None:
            result.skipped[reason] += 1
        for share in found:
            shares.setdefault(share.key, []).append(share)
    result.items = {key: combine(group, rules) for key, group in shares.items()}
    return result


#: bump when planning changes what the same rules give, so every state is planned again once
PLAN_VERSION = 1


def _canonical(value: object) -> object:
    if isinstance(value, KeyMap):
        return {"key_map": value.digest}  # its content, without copying a million rows
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    return value


def fingerprint(rules: Mapping[str, Rules]) -> str:
    """A digest of every channel's rules: a start or reload re-plans the stored records only
    when it changed (a million records take minutes to plan again)."""
    data = {
        "version": PLAN_VERSION,
        "channels": {
            name: {f.name: _canonical(getattr(r, f.name)) for f in dataclasses.fields(r)}
            for name, r in rules.items()
        },
    }
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
