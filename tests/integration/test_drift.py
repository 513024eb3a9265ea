"""`stocksync drift` as an operator runs it: after a real `stocksync once`, against the fakes."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

import aiohttp
import anyio
import orjson
import pytest

from adapters import ADAPTERS
from daemon.commands.demo import _hand_edits
from daemon.commands.drift import ChannelDrift, check_channel
from daemon.core.channel import ChannelContext, Readable, readable
from daemon.core.models import Value
from daemon.simulator import FakeKlump, FakeMarketplacer, FakeOrdergroove, variant_id
from daemon.store import ItemRow
from tests.conftest import Serve, World, eventually

pytestmark = pytest.mark.anyio

SKUS = 6


class Shops:
    def __init__(self) -> None:
        self.marketplacer = FakeMarketplacer("mp-" + secrets.token_hex(8))
        self.ordergroove = FakeOrdergroove("og-" + secrets.token_hex(8))
        self.klump = FakeKlump("kl-" + secrets.token_hex(8))


async def setup(world: World, monkeypatch: pytest.MonkeyPatch, og_rate: str = "1000/s") -> Shops:
    world.keycrm.populate(SKUS)
    shops = Shops()
    monkeypatch.setenv("T_MP", shops.marketplacer.api_key)
    monkeypatch.setenv("T_OG", shops.ordergroove.hash_key)
    monkeypatch.setenv("T_KLUMP", shops.klump.secret_key)
    world.secrets += [shops.marketplacer.api_key, shops.ordergroove.hash_key]
    key_map = world.tmp_path / "variants.csv"
    key_map.write_text(
        "sku,key\n" + "".join(f"SKU-{n:05d},{variant_id(7000 + n)}\n" for n in range(1, SKUS + 1)),
        encoding="utf-8",
    )
    mp = await world._serve(shops.marketplacer.app())
    og = await world._serve(shops.ordergroove.app())
    kl = await world._serve(shops.klump.app())
    world.write_config(
        channels=f"""
[[channel]]
name = "marketplacer"
type = "marketplacer"
base_url = "{mp}"
api_key_env = "T_MP"
key_map = "{key_map}"
rate_limit = "1000/s"

[[channel]]
name = "ordergroove"
type = "ordergroove"
base_url = "{og}"
public_id = "{shops.ordergroove.public_id}"
sig_field = "{shops.ordergroove.sig_field}"
hash_key_env = "T_OG"
rate_limit = "{og_rate}"

[[channel]]
name = "klump"
type = "klump"
base_url = "{kl}"
secret_key_env = "T_KLUMP"
rate_limit = "1000/s"
reassert_interval = "12h"
"""
    )
    once = await stocksync("once", world.tmp_path / "stocksync.toml")
    assert once.code == 0, once.err
    assert len(shops.marketplacer.count_on_hand) == SKUS
    return shops


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


async def stocksync(command: str, config: Path, *args: str) -> Run:
    """The real command in a child process; the fakes keep serving on this event loop."""
    result = await anyio.run_process(
        [sys.executable, "-m", "daemon", command, "-c", str(config), *args], check=False
    )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


async def test_drift_reports_agreement_then_a_change_made_by_hand(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    shops = await setup(world, monkeypatch)
    config = world.tmp_path / "stocksync.toml"
    mp = shops.marketplacer

    clean = await stocksync("drift", config)
    assert clean.code == 0, clean.out + clean.err
    assert f"marketplacer: {SKUS} checked, {SKUS} in agreement, 0 drifted" in clean.out
    assert f"ordergroove: {SKUS} checked, {SKUS} in agreement, 0 drifted" in clean.out
    assert "klump: no read-back in the API" in clean.out

    edited = variant_id(7002)
    acked = mp.count_on_hand[edited]
    mp.edit_by_hand(edited, acked + 40)
    gone = variant_id(7005)
    del mp.count_on_hand[gone]
    writes = [d for d in mp.documents if d["query"].startswith("mutation")]

    drifted = await stocksync("drift", config)
    assert drifted.code == 1, drifted.out + drifted.err
    assert f"marketplacer: {SKUS} checked, {SKUS - 2} in agreement, 1 drifted, 1 missing" in (
        drifted.out
    )
    assert (
        f"drifted     {edited}  desired qty={acked}  acknowledged qty={acked}  "
        f"live qty={acked + 40}"
    ) in drifted.out
    assert f"missing     {gone}" in drifted.out
    # a report changes nothing: no write went out, the edit by hand is still there
    assert [d for d in mp.documents if d["query"].startswith("mutation")] == writes
    assert mp.count_on_hand[edited] == acked + 40
    for secret in world.secrets:
        assert secret not in drifted.out + drifted.err


async def test_drift_json_for_one_channel(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    shops = await setup(world, monkeypatch)
    og = shops.ordergroove
    product = "SKU-00003"
    acked = og.live[product]
    og.edit_by_hand(product, not acked)
    reads_before = len(shops.marketplacer.reads)

    run = await stocksync(
        "drift", world.tmp_path / "stocksync.toml", "--channel", "ordergroove", "--json"
    )
    assert run.code == 1, run.err
    report = orjson.loads(run.out)
    assert report["clean"] is False
    assert report["not_readable"] == []
    (channel,) = report["channels"]
    assert channel["channel"] == "ordergroove"
    assert (channel["checked"], channel["in_agreement"]) == (SKUS, SKUS - 1)
    assert channel["drifted"] == [
        {
            "key": product,
            "desired": {"live": acked},
            "acknowledged": {"live": acked},
            "live": {"live": not acked},
        }
    ]
    assert len(shops.marketplacer.reads) == reads_before  # --channel reads only that channel


async def test_drift_paces_reads_within_a_share_of_the_rate_limit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    shops = await setup(world, monkeypatch, og_rate="40/s")  # share 0.5: one read per 50 ms
    run = await stocksync(
        "drift",
        world.tmp_path / "stocksync.toml",
        *("--channel", "ordergroove", "--share", "0.5", "--progress-every", "0.1"),
    )
    assert run.code == 0, run.out + run.err
    # Not silent while it reads (issue 22): how far each channel is, on stderr.
    progress = [line for line in run.err.splitlines() if line.startswith("drift: read ")]
    assert progress, run.err
    assert progress[-1].startswith("drift: read ordergroove ")
    assert progress[-1].endswith(f"/{SKUS}")
    reads = shops.ordergroove.reads
    assert len(reads) == SKUS  # one product per request
    gaps = [later - earlier for earlier, later in pairwise(reads)]
    assert min(gaps) >= 0.04, gaps


async def test_drift_with_refused_credentials_is_unreadable_not_clean(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    shops = await setup(world, monkeypatch)
    shops.marketplacer.api_key = "revoked-" + secrets.token_hex(4)
    run = await stocksync("drift", world.tmp_path / "stocksync.toml", "--channel", "marketplacer")
    assert run.code == 1
    assert (
        f"marketplacer: {SKUS} checked, 0 in agreement, 0 drifted, 0 missing, {SKUS} unreadable"
        in run.out
    )
    assert "HTTP 401" in run.out
    assert shops.marketplacer.api_key not in run.out + run.err
    for secret in world.secrets:
        assert secret not in run.out + run.err


async def test_drift_usage_errors(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    await setup(world, monkeypatch)
    config = world.tmp_path / "stocksync.toml"
    unknown = await stocksync("drift", config, "--channel", "nope")
    assert unknown.code == 2
    assert "no channel named 'nope'" in unknown.err
    (world.tmp_path / "state.db").rename(world.tmp_path / "moved.db")
    no_state = await stocksync("drift", config)
    assert no_state.code == 2
    assert "no state file" in no_state.err
    assert not (world.tmp_path / "state.db").exists()  # the report does not create one


# --- in process: how a batch that fails is retried or given up ---------------------------------


@pytest.fixture
async def marketplacer(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FakeMarketplacer, Readable, list[ItemRow]]]:
    fake = FakeMarketplacer("mp-" + secrets.token_hex(8))
    monkeypatch.setenv("T_MP", fake.api_key)
    spec = ADAPTERS["marketplacer"]
    settings = spec.settings.model_validate(
        {"base_url": await serve(fake.app()), "api_key_env": "T_MP"}
    )
    acked = []
    for n in range(1, 4):
        fake.count_on_hand[variant_id(n)] = n
        value = Value(quantity=n)
        acked.append(ItemRow("mp", variant_id(n), value, value, "ok", 0, None, None, 0.0))
    async with aiohttp.ClientSession() as session:
        reader = readable(spec.build(settings, ChannelContext("mp", session, 5.0)))
        assert reader is not None
        yield fake, reader, acked


async def test_a_batch_answered_503_is_read_again(
    marketplacer: tuple[FakeMarketplacer, Readable, list[ItemRow]],
) -> None:
    fake, reader, acked = marketplacer
    fake.faults.add(503, retry_after="0")
    into = ChannelDrift("mp")
    await check_channel(reader, acked, rate=1000, into=into)
    assert (into.checked, into.agree, into.error) == (3, 3, None)
    assert len(fake.reads) == 1  # the 503 came before the fake counted a read


async def test_a_long_retry_after_leaves_the_batch_unreadable_at_once(
    marketplacer: tuple[FakeMarketplacer, Readable, list[ItemRow]],
) -> None:
    fake, reader, acked = marketplacer
    fake.faults.add(429, retry_after="120")
    into = ChannelDrift("mp")
    with anyio.fail_after(5):
        await check_channel(reader, acked, rate=1000, into=into)
    assert into.unreadable == [row.key for row in acked]
    assert "HTTP 429" in (into.error or "")


async def test_the_demo_shop_floor_edits_marketplacer_by_hand() -> None:
    fake = FakeMarketplacer("unused")
    fake.count_on_hand = {variant_id(1): 5, variant_id(2): 6}
    before = dict(fake.count_on_hand)
    async with anyio.create_task_group() as group:
        group.start_soon(_hand_edits, fake, 0.01)
        await eventually(lambda: fake.count_on_hand != before)
        group.cancel_scope.cancel()
