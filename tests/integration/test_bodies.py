"""Answers are read with a ceiling: a huge body or a gzip bomb is a retryable error, not an OOM."""

from __future__ import annotations

import gzip
import tracemalloc

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from adapters._http import send
from daemon.bodies import MAX_BODY_BYTES
from daemon.budget import RequestBudget
from daemon.config import KeycrmSettings
from daemon.errors import ChannelRetryable
from daemon.keycrm import KeycrmClient
from daemon.simulator import FakeInventoryApi, FakeKeycrm
from daemon.telemetry import Metrics
from tests.conftest import Serve

pytestmark = pytest.mark.anyio

#: 64 MiB of zeros, about 64 KiB on the wire.
BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)


async def push(url: str, token: str) -> None:
    async with aiohttp.ClientSession() as session:
        await send(
            session,
            "POST",
            f"{url}/api/product/inventory",
            channel="pos",
            payload={"upc": "1", "store": "S1", "quantity": 1},
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=30),
        )


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"x" * (MAX_BODY_BYTES + 1), {}),
        (BOMB, {"Content-Encoding": "gzip"}),
    ],
    ids=["large", "gzip-bomb"],
)
async def test_a_channel_answer_over_the_limit_is_retryable_and_names_it(
    serve: Serve, body: bytes, headers: dict[str, str]
) -> None:
    fake = FakeInventoryApi("pos-token-0123")
    url = await serve(fake.app())
    fake.faults.add(500, body=body, headers=headers)
    tracemalloc.start()
    try:
        with pytest.raises(ChannelRetryable, match="larger than 10 MiB") as caught:
            await push(url, fake.token)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.retry_after is None
    # The fake holds the body it sends; what we read stays near the limit, never the whole bomb.
    assert peak < len(body) + 2 * MAX_BODY_BYTES + 8 * 1024 * 1024
    await push(url, fake.token)  # the next answer is normal again


async def test_a_keycrm_gzip_bomb_is_counted_and_retried(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeKeycrm("kc-bodies-key-0123")
    fake.populate(60)
    fake.faults.add(0, body=BOMB, headers={"Content-Encoding": "gzip"})
    url = await serve(fake.app())
    monkeypatch.setenv("T_KC", fake.api_key)
    settings = KeycrmSettings.model_validate({"base_url": f"{url}/v1", "api_key_env": "T_KC"})
    metrics = Metrics(CollectorRegistry(), [], "test")
    async with aiohttp.ClientSession() as session:
        client = KeycrmClient(settings, session, RequestBudget(6000), metrics, details=False)
        skus = [level.sku async for page in client.scan() for level in page.items]
    assert len(skus) == 60
    too_large = metrics.registry.get_sample_value(
        "stocksync_keycrm_requests_total", {"kind": "scan", "status": "too_large"}
    )
    assert too_large == 1
