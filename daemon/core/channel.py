"""The extension point: what the engine needs from a channel adapter, and nothing more.

An adapter is one module in `adapters/` with three parts in this order: its settings model,
a class implementing `Channel`, and a `ChannelSpec` the registry points at. Adapters do not
retry, sleep, rate-limit or record metrics: the dispatcher does that, once, for every channel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel

from daemon.core.models import ItemValue, PushResult, Value

__all__ = [
    "Channel",
    "ChannelContext",
    "ChannelSpec",
    "Probe",
    "Probeable",
    "Readable",
    "Shape",
    "readable",
]


class Channel(Protocol):
    """One sales channel. Holds its settings and an injected aiohttp session; nothing else."""

    name: str
    max_batch: int

    async def push(self, items: Sequence[ItemValue]) -> list[PushResult]:
        """Set these items' absolute values. Idempotent: pushing the same values twice is harmless.

        Returns one result per item (per-item rejections and retries are results). A failure of
        the whole call raises a `ChannelError` subclass: `ChannelRetryable` (with `retry_after`
        when the channel gave one), `ChannelRejected` or `ChannelFatal`. Never raises anything
        else for an answer the channel gave; network errors are raised as `ChannelRetryable`.
        """
        ...


@runtime_checkable
class Readable(Protocol):
    """The optional read-back capability: a channel whose API can say what it holds now.

    Drift (a value changed by hand in a seller portal, an import, a recreated product) is only
    visible to a channel that can be asked; the others are re-asserted on a schedule instead.
    """

    name: str
    #: keys one `read` call covers with one request (callers pace per call)
    max_read_batch: int

    async def read(self, keys: Sequence[str]) -> dict[str, Value | None]:
        """What the channel holds now for these keys, in the shape `push` sends. Changes nothing.

        A key mapped to None is missing on the channel (unknown id, no record for it). A key left
        out of the answer could not be read (the channel answered with something stocksync cannot
        compare, such as infinite stock). A failure of the whole call raises the same classes as
        `push`: `ChannelRetryable` (with `retry_after`), `ChannelRejected`, `ChannelFatal`.
        """
        ...


def readable(channel: Channel) -> Readable | None:
    """The channel's read-back capability, or None when its API documents no read."""
    return channel if isinstance(channel, Readable) else None


@dataclass(frozen=True, slots=True)
class Probe:
    """What one harmless authenticated request to a channel found (`check-config --connect`).

    `verdict` is one of: reachable, auth refused, not found, unexpected answer.
    """

    ok: bool
    verdict: str
    detail: str = ""


@runtime_checkable
class Probeable(Protocol):
    """A channel that can test its address and credentials without changing anything."""

    async def probe(self) -> Probe:
        """Send one request that the channel authenticates but that changes nothing (an empty
        batch, a request missing its required fields, a read) and say what the answer means.
        Network failures raise `ChannelRetryable` from the client error, as `push` does."""
        ...


@dataclass(frozen=True, slots=True)
class Shape:
    """How a channel's items are cut from keyCRM records: the adapter's part of planning.

    `key_parts` are key templates (see `daemon.rules.plan`); `location` appends one fixed part (a
    store code) to every key; `locations` instead splits each record per keyCRM warehouse, one item
    per mapped warehouse. `price` says whether the channel takes a price; `live_threshold` turns the
    value into a live flag (live while available stock is above it) instead of a quantity.
    """

    key_parts: tuple[str, ...]
    location: str | None = None
    locations: Mapping[int, str] | None = None
    price: bool = False
    live_threshold: int | None = None


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What the engine hands an adapter when it builds one."""

    name: str
    session: aiohttp.ClientSession
    timeout: float


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A registry entry: how to validate, plan and build one channel type."""

    settings: type[BaseModel]
    max_batch: int
    shape: Callable[[Any, str | None], Shape]
    build: Callable[[Any, ChannelContext], Channel]
    default_rate: str = "5/s"
    default_batch: int | None = None
    #: True when no default key makes sense (Marketplacer's variant ids): `key` or `key_map` needed
    requires_key: bool = False
