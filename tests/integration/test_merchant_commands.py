"""The commands on a merchants folder: every file checked, one merchant picked, all shown."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from adapters import ADAPTERS
from daemon.config.deployment import load_deployment
from daemon.shell.daemon import Daemon
from tests.conftest import World, eventually, running
from tests.integration.test_ops_commands import cli, free_port, without_secrets
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


def with_secrets() -> dict[str, str]:
    """This process' environment: the shell of the service, which holds every secret."""
    return {k: v for k, v in os.environ.items() if k != "STOCKSYNC_CONFIG"}


def folder_config(world: World, shops: dict[str, str], *, port: int = 0) -> Path:
    """`stocksync.toml` naming `merchants/`, one file per merchant (merchant -> its one shop),
    all reading the one fake keyCRM; SQLite state in `state/` (the default beside the file)."""
    root = world.tmp_path
    (root / "merchants").mkdir(exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    for name, shop in shops.items():
        (root / "merchants" / f"{name}.toml").write_text(
            f"""
[keycrm]
base_url = "{world.urls["keycrm"]}/v1"
api_key_env = "T_KEYCRM_KEY"
requests_per_minute = 6000
poll_interval = "1h"

[sync]
debounce = "0s"
max_delay = "1s"
{world.shop_table(shop)}
""",
            encoding="utf-8",
        )
    main = root / "main.toml"
    main.write_text(
        f"""
[daemon]
merchants = "merchants"
listen = "127.0.0.1:{port}"
shutdown_timeout = "3s"
admin_token_env = "T_ADMIN_TOKEN"
""",
        encoding="utf-8",
    )
    return main


async def check(path: Path, *extra: str) -> tuple[int, str, str]:
    return await cli("check-config", "-c", str(path), *extra, env=with_secrets())


async def settled(daemon: Daemon) -> bool:
    """Nothing of any merchant pending or in flight."""
    for served in daemon.merchants.values():
        parts, store = served.parts, served.store
        if parts is None or store is None:
            return False
        counts = await store.counts()
        if sum(c.get("pending", 0) + c.get("sending", 0) for c in counts.values()):
            return False
        if any(d.in_flight for d in parts.dispatchers.values()):
            return False
    return True


async def test_check_config_reports_every_merchant_file_and_one_on_request(world: World) -> None:
    await world.add_shop("pos")
    path = folder_config(world, {"acme": "pos", "bad": "pos"})
    bad = world.tmp_path / "merchants" / "bad.toml"
    text = bad.read_text().replace("T_KEYCRM_KEY", "T_UNSET_KEY").replace("[sync]", "[sync]\nx = 1")
    bad.write_text(text)

    code, out, err = await check(path)
    assert code == 2, err
    assert out == "acme.toml: ok (1 channel)\n"
    faults = err.splitlines()
    assert faults[-1] == "bad.toml: 2 faults", err
    assert {line.split(": ", 1)[0] for line in faults[:-1]} == {
        "bad.toml keycrm.api_key_env",
        "bad.toml sync.x",
    }, err

    assert await check(path, "--merchant", "acme") == (
        0,
        "acme.toml: ok (1 channel)\n",
        "",
    )
    code, out, err = await check(path, "--connect")  # the valid merchants' endpoints
    assert code == 2
    assert out.splitlines()[1:] == [
        "acme.toml keycrm: reachable (HTTP 200, API key accepted)",
        "acme.toml keycrm orders: reachable (HTTP 200: the order feed can poll)",
        'acme.toml channel "pos": reachable (HTTP 400, credentials accepted)',
    ]
    code, _, err = await check(path, "--merchant", "nope")
    assert (code, err) == (2, "--merchant: no merchant 'nope' (merchants: acme, bad)\n")


async def test_status_resync_history_and_guard_of_two_merchants(world: World) -> None:
    world.keycrm.populate(6)
    pos = await world.add_shop("pos")
    web = await world.add_shop("web")
    path = folder_config(world, {"acme": "pos", "bolt": "web"}, port=free_port())
    daemon = Daemon(load_deployment(path, ADAPTERS), handle_signals=False)
    c = ("-c", str(path))
    async with running(daemon):
        await eventually(lambda: in_sync(world) and in_sync(world, "web") and settled(daemon))

        code, out, err = await cli("status", *c)
        assert code == 0, err
        lines = out.splitlines()
        assert "merchants: 2 of 2 ready" in lines
        assert "merchant acme: serving, ready" in lines and "merchant bolt: serving, ready" in lines
        at = lines.index("merchant bolt: serving, ready")
        assert [line.split()[:2] for line in lines[:at] if line.startswith(("pos", "web"))] == [
            ["pos", "up"]
        ]
        assert [line.split()[:2] for line in lines[at:] if line.startswith(("pos", "web"))] == [
            ["web", "up"]
        ]
        code, out, _ = await cli("status", *c, "--merchant", "bolt")
        assert code == 0 and "merchant acme" not in out and "merchant bolt" not in out
        assert [
            line.split()[:2] for line in out.splitlines() if line.startswith(("pos", "web"))
        ] == [["web", "up"]]
        code, out, _ = await cli("status", *c, "--json")
        assert orjson.loads(out)["merchants"]["acme"]["channels"]["pos"]["state"] == "up"
        code, _, err = await cli("status", *c, "--merchant", "nope")
        assert code == 1 and "serves no merchant 'nope' (it serves: acme, bolt)" in err

        # history reads the merchant's own state file, and asks which merchant
        code, out, err = await cli("history", *c, "--merchant", "acme", "SKU-00003")
        assert code == 0, err
        assert "pos" in out and "web" not in out
        code, _, err = await cli("history", *c, "SKU-00003")
        assert code == 2 and "--merchant: required" in err and "(acme, bolt)" in err

        admin = without_secrets(T_ADMIN_TOKEN=world.admin_token)
        before, web_before = len(pos.requests), len(web.requests)
        code, out, err = await cli("resync", *c, "--merchant", "acme", env=admin)
        assert code == 0, err
        assert out.startswith("resync of acme started")
        await eventually(lambda: len(pos.requests) >= before + 6)
        await eventually(lambda: settled(daemon))
        assert len(web.requests) == web_before
        code, _, err = await cli("resync", *c, "--merchant", "nope", env=admin)
        assert code == 1 and "serves no merchant 'nope' (it serves: acme, bolt)" in err

        code, _, err = await cli("guard", "release", *c, env=admin)
        assert code == 2 and "--merchant: required" in err
        code, out, err = await cli("guard", "release", *c, "--merchant", "bolt", env=admin)
        assert (code, out.strip()) == (0, "the mass-change guard holds nothing"), err


async def test_once_works_on_the_merchant_it_is_given(world: World) -> None:
    world.keycrm.populate(4)
    pos = await world.add_shop("pos")
    web = await world.add_shop("web")
    path = folder_config(world, {"acme": "pos", "bolt": "web"})
    code, _, err = await cli("once", "-c", str(path), env=with_secrets())
    assert code == 2
    assert err.startswith("--merchant: required: ") and err.endswith("(acme, bolt)\n")

    code, _, err = await cli("once", "-c", str(path), "--merchant", "acme", env=with_secrets())
    assert code == 0, err
    assert in_sync(world) and len(pos.stock) == 4 and web.stock == {}
    assert sorted(p.name for p in (world.tmp_path / "state").glob("*.db")) == ["acme.db"]

    single = world.write_config()  # a single-merchant file is merchant default alone
    code, _, err = await cli("once", "-c", str(single), "--merchant", "acme", env=with_secrets())
    assert code == 2 and "serves one merchant, default" in err
