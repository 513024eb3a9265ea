"""A `[[channel]]` table to a `ChannelConfig`: the engine's keys, its adapter's, and its rules.

The engine knows a channel's naming, planning and dispatch keys (`ChannelCommon`); every other key
(credentials, `match`, `store_map`...) belongs to the channel type, whose adapter validates them
with its own model. Both halves are checked even when one fails, so every fault comes at once. A
channel is named in its faults by its `name` when it has a usable, unique one, else by its place
(`channel[1]`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError

from daemon.config.fields import (
    NAME,
    Duration,
    Rate,
    Settings,
    Timeout,
    key_text,
    validation_faults,
)
from daemon.core.channel import ChannelSpec, Shape
from daemon.core.units import parse_rate
from daemon.rules.keymap import KeyMapCache
from daemon.rules.plan import Rules, compile_template

__all__ = ["ChannelCommon", "ChannelConfig", "load_channels"]


class ChannelCommon(Settings):
    """The engine's keys of a `[[channel]]` table: naming, planning and dispatch."""

    name: Annotated[str, Field(pattern=NAME)]
    type: str
    key: str | None = None
    key_map: Path | None = None
    buffer: int = Field(default=0, ge=0)
    cap: int | None = Field(default=None, gt=0)
    warehouses: tuple[int, ...] = ()
    subtract_reserve: bool = True
    concurrency: int = Field(default=4, gt=0, le=256)
    rate_limit: Rate | None = None
    timeout: Timeout = 10.0
    batch_size: int | None = Field(default=None, gt=0)
    reassert_interval: Duration | None = None


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One channel, validated: the engine's settings, the adapter's settings and its rules."""

    name: str
    type: str
    spec: ChannelSpec
    options: BaseModel
    rules: Rules
    concurrency: int
    rate: float
    timeout: float
    batch_size: int
    #: push the acknowledged values again on this schedule (channels that cannot be read back)
    reassert_interval: float | None = None


def _channel_label(index: int, table: Mapping[str, Any], shared: set[str]) -> str:
    """`channel "klump"` for a channel with a usable name of its own, else `channel[1]`."""
    name = table.get("name")
    if isinstance(name, str) and re.match(NAME, name) and name not in shared:
        return f'channel "{name}"'
    return f"channel[{index}]"


def _channel(
    where: tuple[int | str, ...],
    table: Mapping[str, Any],
    registry: Mapping[str, ChannelSpec],
    base_dir: Path,
    faults: list[tuple[str, str]],
    *,
    key_maps: KeyMapCache,
) -> ChannelConfig | None:
    before = len(faults)
    engine_keys = ChannelCommon.model_fields.keys()
    common_part = {k: v for k, v in table.items() if k in engine_keys}
    adapter_part = {k: v for k, v in table.items() if k not in engine_keys}
    common: ChannelCommon | None = None
    try:
        common = ChannelCommon.model_validate(common_part)
    except ValidationError as exc:
        faults.extend(validation_faults(exc, where))
    type_name = table.get("type")
    spec = registry.get(type_name) if isinstance(type_name, str) else None
    if spec is None:
        if isinstance(type_name, str):
            known = ", ".join(sorted(registry))
            faults.append(
                (key_text((*where, "type")), f"unknown type {type_name!r}; known: {known}")
            )
        return None
    options: BaseModel | None = None
    try:
        options = spec.settings.model_validate(adapter_part)
    except ValidationError as exc:
        faults.extend(validation_faults(exc, where))
    if common is None:
        return None

    key_map = None
    if spec.requires_key and common.key is None and common.key_map is None:
        faults.append(
            (key_text((*where, "key")), f"type {common.type} needs key or key_map (the item ids)")
        )
    if common.key_map is not None:
        if common.key is not None:
            faults.append((key_text((*where, "key")), "give key or key_map, not both"))
        path = common.key_map if common.key_map.is_absolute() else base_dir / common.key_map
        try:
            key_map = key_maps.load(path)
        except ValueError as exc:
            faults.append((key_text((*where, "key_map")), str(exc)))
    shape: Shape | None = None
    try:
        if options is not None:
            shape = spec.shape(options, common.key)
            templates = tuple(compile_template(part) for part in shape.key_parts)
        elif common.key is not None:
            compile_template(common.key)
    except ValueError as exc:
        faults.append((key_text((*where, "key")), str(exc)))
    if common.batch_size is not None and common.batch_size > spec.max_batch:
        limit = f"must be at most {spec.max_batch} for type {common.type}"
        faults.append((key_text((*where, "batch_size")), limit))
    if len(faults) > before or shape is None or options is None:
        return None
    rules = Rules(
        key_parts=templates,
        key_map=key_map,
        location=shape.location,
        locations=shape.locations,
        warehouses=frozenset(common.warehouses),
        subtract_reserve=common.subtract_reserve,
        buffer=common.buffer,
        cap=common.cap,
        price=shape.price,
        live_threshold=shape.live_threshold,
    )
    return ChannelConfig(
        name=common.name,
        type=common.type,
        spec=spec,
        options=options,
        rules=rules,
        concurrency=common.concurrency,
        rate=common.rate_limit if common.rate_limit is not None else parse_rate(spec.default_rate),
        timeout=common.timeout,
        batch_size=common.batch_size or spec.default_batch or spec.max_batch,
        reassert_interval=common.reassert_interval,
    )


def load_channels(
    tables: Any,
    registry: Mapping[str, ChannelSpec],
    base_dir: Path,
    faults: list[tuple[str, str]],
) -> list[ChannelConfig]:
    """Every `[[channel]]` table; a name used twice is a fault even when the tables have others."""
    channels: list[ChannelConfig] = []
    key_maps = KeyMapCache()
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        faults.append(("channel", "must be an array of tables: [[channel]]"))
        tables = []
    if not tables:
        faults.append(("channel", "at least one [[channel]] is required"))
    first: dict[str, int] = {}
    shared: set[str] = set()
    for index, table in enumerate(tables):
        name = table.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            shared.add(name)
            faults.append(
                (f"channel[{index}].name", f"{name!r} is also the name of channel[{first[name]}]")
            )
        else:
            first[name] = index
    for index, table in enumerate(tables):
        label = _channel_label(index, table, shared)
        channel = _channel((label,), table, registry, base_dir, faults, key_maps=key_maps)
        if channel is not None:
            channels.append(channel)
    return channels
