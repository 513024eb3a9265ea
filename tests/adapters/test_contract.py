"""One contract every adapter keeps, run against each adapter's fake over real HTTP.

A new channel is one module, one registry line, one fake and one `Harness`: this suite then
checks it pushes a batch, re-pushes harmlessly, maps per-item rejections, turns 429, 5xx, 401
and network failures into the right error class, never acknowledges a 2xx whose body reports a
failure or is not the JSON the API documents, and never puts a secret in an error. A channel
that can be read back (`Readable`) also reads back what it pushed and what was changed by hand,
reports missing items as None, and fails reads with the same error classes as pushes.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from structlog.testing import capture_logs

from adapters import ADAPTERS
from daemon.core.channel import Channel, ChannelContext, Probeable, Readable, readable
from daemon.core.errors import ChannelError, ChannelFatal, ChannelRetryable
from daemon.core.models import Outcome, Value
from tests.adapters.harness import HARNESSES, Harness
from tests.conftest import Serve

pytestmark = pytest.mark.anyio


def test_every_registered_adapter_has_a_harness() -> None:
    assert {h.type for h in HARNESSES} == set(ADAPTERS)


@dataclass
class Rig:
    harness: Harness
    fake: Any
    channel: Channel
    secret: str
    url: str


@asynccontextmanager
async def build_rig(
    harness: Harness, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    secret = "s3cret-" + secrets.token_hex(8)
    fake = harness.make_fake(secret)
    url = await serve(harness.app(fake))
    monkeypatch.setenv("T_CHANNEL_SECRET", secret)
    spec = ADAPTERS[harness.type]
    settings = spec.settings.model_validate(harness.options(url, "T_CHANNEL_SECRET"))
    async with aiohttp.ClientSession() as session:
        channel = spec.build(settings, ChannelContext("contract", session, 5.0))
        yield Rig(harness, fake, channel, secret, url)


@pytest.fixture(params=HARNESSES, ids=lambda h: h.id)
async def rig(
    request: pytest.FixtureRequest, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    async with build_rig(request.param, serve, monkeypatch) as built:
        yield built


@pytest.fixture(params=[h for h in HARNESSES if h.edit is not None], ids=lambda h: h.id)
async def read_rig(
    request: pytest.FixtureRequest, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    """Only the channels that can be read back; the others are re-asserted on a schedule."""
    async with build_rig(request.param, serve, monkeypatch) as built:
        yield built


async def push_all(rig: Rig) -> list[Outcome]:
    items = rig.harness.items
    outcomes: list[Outcome] = []
    for start in range(0, len(items), rig.channel.max_batch):
        results = await rig.channel.push(items[start : start + rig.channel.max_batch])
        outcomes.extend(r.outcome for r in results)
    return outcomes


async def test_a_batch_is_acknowledged_and_held(rig: Rig) -> None:
    assert await push_all(rig) == [Outcome.ACKNOWLEDGED] * len(rig.harness.items)
    for item in rig.harness.items:
        assert rig.harness.held(rig.fake, item) == item.value


async def test_pushing_the_same_values_again_is_harmless(rig: Rig) -> None:
    await push_all(rig)
    assert await push_all(rig) == [Outcome.ACKNOWLEDGED] * len(rig.harness.items)
    for item in rig.harness.items:
        assert rig.harness.held(rig.fake, item) == item.value


async def test_one_rejected_item_leaves_the_others_acknowledged(rig: Rig) -> None:
    bad = rig.harness.items[1]
    rig.harness.reject(rig.fake, bad)
    outcomes = await push_all(rig)
    assert outcomes[1] is Outcome.REJECTED
    assert [o for i, o in enumerate(outcomes) if i != 1] == [Outcome.ACKNOWLEDGED] * (
        len(outcomes) - 1
    )


async def outcomes_of(rig: Rig, items: list[Any]) -> list[Outcome | ChannelError]:
    """Each item's outcome, or the error the whole request raised for every item of it."""
    try:
        return [r.outcome for r in await rig.channel.push(items)]
    except ChannelError as exc:
        return [exc] * len(items)


async def test_a_2xx_whose_body_reports_a_failure_is_retried_then_lands(rig: Rig) -> None:
    # What the Inventory Update API did: `200 {"success": false, "error": "database is locked"}`.
    # Each fake words it as its API does; nothing names the item as invalid, so: retry.
    items = rig.harness.items[: rig.channel.max_batch]
    rig.fake.faults.fail_in_body("database is locked")
    outcomes = await outcomes_of(rig, items[:1])
    assert all(o is Outcome.RETRY or isinstance(o, ChannelRetryable) for o in outcomes), outcomes
    assert rig.harness.held(rig.fake, items[0]) is None
    assert await outcomes_of(rig, items[:1]) == [Outcome.ACKNOWLEDGED]
    assert rig.harness.held(rig.fake, items[0]) == items[0].value


@pytest.mark.parametrize(
    "body", [b"<html><body>Service Unavailable</body></html>", b"[1, 2", b'"queued"']
)
async def test_a_2xx_that_is_not_the_documented_json_is_retried(rig: Rig, body: bytes) -> None:
    # A proxy's page, a cut-off answer, or a bare JSON string where an object is promised:
    # nothing says the update was applied, so it is sent again rather than counted done.
    rig.fake.faults.add(0, body=body)
    outcomes = await outcomes_of(rig, rig.harness.items[:1])
    assert all(o is Outcome.RETRY or isinstance(o, ChannelRetryable) for o in outcomes), outcomes


async def test_429_with_retry_after_is_retryable_with_the_delay(rig: Rig) -> None:
    rig.fake.faults.add(429, retry_after="7")
    with pytest.raises(ChannelRetryable) as caught:
        await rig.channel.push(rig.harness.items[:1])
    assert caught.value.retry_after == 7


async def test_a_server_error_is_retryable(rig: Rig) -> None:
    rig.fake.faults.add(503)
    with pytest.raises(ChannelRetryable):
        await rig.channel.push(rig.harness.items[:1])


async def test_bad_credentials_are_fatal_for_the_channel(rig: Rig) -> None:
    rig.harness.break_auth(rig.fake)
    with pytest.raises(ChannelFatal) as caught:
        await rig.channel.push(rig.harness.items[:1])
    assert rig.secret not in str(caught.value)


async def test_no_answer_is_retryable_and_says_so_without_secrets(rig: Rig) -> None:
    with aioresponses() as mocked:
        anything = re.compile(re.escape(rig.url) + ".*")
        for method in ("POST", "PATCH", "PUT"):
            refused = aiohttp.ClientConnectionError("refused")
            mocked.add(anything, method=method, exception=refused, repeat=True)
        with pytest.raises(ChannelError) as caught:
            await rig.channel.push(rig.harness.items[:1])
    assert isinstance(caught.value, ChannelRetryable)
    assert rig.secret not in str(caught.value)


# --- read-back ---------------------------------------------------------------------------------


async def test_a_channel_is_readable_exactly_when_its_harness_has_read_cases(rig: Rig) -> None:
    assert (readable(rig.channel) is not None) == (rig.harness.edit is not None)


@pytest.fixture
def reader(read_rig: Rig) -> Readable:
    found = readable(read_rig.channel)
    assert found is not None
    assert found.max_read_batch >= 1
    return found


async def read_all(reader: Readable, keys: list[str]) -> dict[str, Value | None]:
    values: dict[str, Value | None] = {}
    for start in range(0, len(keys), reader.max_read_batch):
        values.update(await reader.read(keys[start : start + reader.max_read_batch]))
    return values


async def test_read_returns_what_was_pushed(read_rig: Rig, reader: Readable) -> None:
    await push_all(read_rig)
    keys = [item.key for item in read_rig.harness.items]
    assert await read_all(reader, keys) == {item.key: item.value for item in read_rig.harness.items}


async def test_read_sees_a_change_made_by_hand(read_rig: Rig, reader: Readable) -> None:
    await push_all(read_rig)
    item = read_rig.harness.items[0]
    by_hand = (
        Value(live=not item.value.live)
        if item.value.live is not None
        else Value(quantity=(item.value.quantity or 0) + 7)
    )
    assert read_rig.harness.edit is not None
    read_rig.harness.edit(read_rig.fake, item, by_hand)
    assert await read_all(reader, [item.key]) == {item.key: by_hand}


async def test_an_item_the_channel_does_not_hold_reads_as_missing(
    read_rig: Rig, reader: Readable
) -> None:
    await push_all(read_rig)
    assert read_rig.harness.absent
    assert await read_all(reader, read_rig.harness.absent) == dict.fromkeys(read_rig.harness.absent)


async def test_a_read_with_bad_credentials_is_fatal_and_keeps_the_secret(
    read_rig: Rig, reader: Readable
) -> None:
    read_rig.harness.break_auth(read_rig.fake)
    with capture_logs() as logs, pytest.raises(ChannelFatal) as caught:
        await reader.read([read_rig.harness.items[0].key])
    assert read_rig.secret not in str(caught.value)
    assert read_rig.secret not in repr(logs)


async def test_a_read_answered_429_is_retryable_with_the_delay(
    read_rig: Rig, reader: Readable
) -> None:
    read_rig.fake.faults.add(429, retry_after="7")
    with pytest.raises(ChannelRetryable) as caught:
        await reader.read([read_rig.harness.items[0].key])
    assert caught.value.retry_after == 7


async def test_a_read_answered_5xx_is_retryable(read_rig: Rig, reader: Readable) -> None:
    read_rig.fake.faults.add(502)
    with pytest.raises(ChannelRetryable):
        await reader.read([read_rig.harness.items[0].key])


async def test_a_read_without_answer_is_retryable_and_keeps_the_secret(
    read_rig: Rig, reader: Readable
) -> None:
    with capture_logs() as logs, aioresponses() as mocked:
        anything = re.compile(re.escape(read_rig.url) + ".*")
        for method in ("GET", "POST"):
            refused = aiohttp.ClientConnectionError("refused")
            mocked.add(anything, method=method, exception=refused, repeat=True)
        with pytest.raises(ChannelRetryable) as caught:
            await reader.read([read_rig.harness.items[0].key])
    assert read_rig.secret not in str(caught.value)
    assert read_rig.secret not in repr(logs)


async def test_a_probe_checks_address_and_credentials_and_changes_nothing(rig: Rig) -> None:
    assert isinstance(rig.channel, Probeable)
    probe = await rig.channel.probe()
    assert (probe.ok, probe.verdict) == (True, "reachable"), probe
    assert all(rig.harness.held(rig.fake, item) is None for item in rig.harness.items)
    rig.harness.break_auth(rig.fake)
    refused = await rig.channel.probe()
    assert (refused.ok, refused.verdict) == (False, "auth refused"), refused
    assert rig.secret not in refused.detail
