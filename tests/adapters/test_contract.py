"""One contract every adapter keeps, run against each adapter's fake over real HTTP.

A new channel is one module, one registry line, one fake and one `Harness`: this suite then
checks it pushes a batch, re-pushes harmlessly, maps per-item rejections, turns 429, 5xx, 401
and network failures into the right error class, and never puts a secret in an error.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from adapters import ADAPTERS
from daemon.channel import Channel, ChannelContext
from daemon.errors import ChannelError, ChannelFatal, ChannelRetryable
from daemon.models import Outcome
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


@pytest.fixture(params=HARNESSES, ids=lambda h: h.id)
async def rig(
    request: pytest.FixtureRequest, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    harness: Harness = request.param
    secret = "s3cret-" + secrets.token_hex(8)
    fake = harness.make_fake(secret)
    url = await serve(harness.app(fake))
    monkeypatch.setenv("T_CHANNEL_SECRET", secret)
    spec = ADAPTERS[harness.type]
    settings = spec.settings.model_validate(harness.options(url, "T_CHANNEL_SECRET"))
    async with aiohttp.ClientSession() as session:
        channel = spec.build(settings, ChannelContext("contract", session, 5.0))
        yield Rig(harness, fake, channel, secret, url)


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
