"""`stocksync check-config` as an operator runs it: the machine's side, and `--connect`."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import anyio
import pytest

from daemon.shell.daemon import Daemon
from tests.conftest import World, running

pytestmark = pytest.mark.anyio


async def check(config: Path, *extra: str) -> tuple[int, str, str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "daemon", "check-config", "-c", str(config), *extra], check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def faults_of(err: str) -> dict[str, str]:
    lines = err.strip().splitlines()
    return dict(line.split(": ", 1) for line in lines)


async def test_everything_run_would_refuse_is_refused_first_all_at_once(
    world: World, tmp_path: Path
) -> None:
    await world.add_shop("pos")
    await world.add_shop("web")
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "map.csv").write_text("sku,key\nA," + "k" * 200_000 + "\n", encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = world.write_config(
            daemon=f'state = "{tmp_path / "folder.db"}"\nlisten = "127.0.0.1:{port}"',
            keycrm='catalog_interval = "' + "9" * 60 + 'h"',
            channels=world.shop_table("pos").replace('"1000/s"', '"inf/s"')
            + world.shop_table("web", 'key_map = "map.csv"\nstore = "S1"')
            + world.shop_table("web"),
        )
        text = (
            config.read_text()
            .replace(f'state = "{tmp_path / "state.db"}"\n', "", 1)
            .replace('listen = "127.0.0.1:0"\n', "", 1)
        )
        config.write_text(text)
        code, out, err = await check(config)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    found = faults_of(err)
    assert set(found) == {
        "daemon.state",
        "daemon.listen",
        "keycrm.catalog_interval",
        'channel "pos".rate_limit',
        "channel[1].key_map",
        "channel[2].name",
    }, err
    assert "is a folder; give a file path" in found["daemon.state"]
    assert found["daemon.listen"] == f"port {port} on 127.0.0.1 is in use by another program"
    assert "too long" in found["keycrm.catalog_interval"]
    assert "not a rate" in found['channel "pos".rate_limit']
    assert "not a readable CSV row" in found["channel[1].key_map"]
    assert found["channel[2].name"] == "'web' is also the name of channel[1]"


async def test_a_state_path_that_cannot_hold_a_database(world: World, tmp_path: Path) -> None:
    await world.add_shop("pos")
    (tmp_path / "notes.txt").write_text("not a database at all", encoding="utf-8")
    for state, problem in (
        (tmp_path / "notes.txt" / "state.db", "does not exist and cannot be made"),
        (tmp_path / "notes.txt", "is not a SQLite database"),
    ):
        config = world.write_config()
        config.write_text(
            config.read_text().replace(str(tmp_path / "state.db"), str(state)), encoding="utf-8"
        )
        code, _, err = await check(config)
        assert code == 2
        assert problem in faults_of(err)["daemon.state"]


async def run_on(config: Path) -> tuple[int | None, str]:
    """`stocksync run` on the file: (None, "") once it has started (it is stopped then), or its
    exit code and stderr when it refuses."""
    process = await anyio.open_process([sys.executable, "-m", "daemon", "run", "-c", str(config)])
    assert process.stderr is not None
    err = b""
    async with process:
        with anyio.fail_after(30):
            async for chunk in process.stderr:
                err += chunk
                if b'"event":"daemon.started"' in err:
                    process.terminate()
                    await process.wait()
                    return None, ""
            return await process.wait(), err.decode()


def with_state(config: Path, state: Path, tmp_path: Path) -> Path:
    text = config.read_text().replace(str(tmp_path / "state.db"), str(state))
    config.write_text(text, encoding="utf-8")
    return config


async def test_check_config_and_run_agree_case_by_case(world: World, tmp_path: Path) -> None:
    """Issue 22: one preflight. Where check-config says ok, run starts; where it refuses, run
    refuses with the very same lines and exit code."""

    async def agree(config: Path) -> tuple[int, str]:
        code, _, err = await check(config)
        started, refusal = await run_on(config)
        if code == 0:
            assert started is None, refusal  # ok: run starts
        else:
            assert (started, faults_of(refusal)) == (code, faults_of(err)), refusal
        return code, err

    await world.add_shop("pos")
    # A state folder that does not exist yet: both fine (run makes it).
    missing = tmp_path / "new" / "deeper" / "state.db"
    assert (await agree(with_state(world.write_config(), missing, tmp_path)))[0] == 0
    assert missing.exists()
    # The port held by another program: both refuse, naming it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await agree(world.write_config(listen=f"127.0.0.1:{port}"))
    assert code == 2
    assert faults_of(err) == {
        "daemon.listen": f"port {port} on 127.0.0.1 is in use by another program"
    }
    # State and port held by a running daemon: both refuse, and say how to reload that one.
    daemon = Daemon(world.config(), handle_signals=False)
    async with running(daemon):
        code, err = await agree(world.write_config(listen=f"127.0.0.1:{daemon.bound_port}"))
    assert code == 2
    found = faults_of(err)
    assert set(found) == {"daemon.state", "daemon.listen"}
    assert f"a stocksync (pid {os.getpid()}) is running on" in found["daemon.state"]
    assert "in use by a running stocksync" in found["daemon.listen"]
    assert "kill -HUP" in found["daemon.state"]


async def test_connect_tries_every_endpoint_once_and_changes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.keycrm.populate(3)
    good = await world.add_shop("pos")
    revoked = await world.add_shop("revoked")
    revoked.token = "something-else"
    await world.add_shop("moved")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    world.urls["moved"] += "/old-path"
    world.urls["dead"] = f"http://127.0.0.1:{dead}"
    monkeypatch.setenv("T_TOKEN_DEAD", "dead-token-0123")
    config = world.write_config(
        channels="".join(world.shop_table(n) for n in ("pos", "revoked", "moved", "dead"))
    )
    code, out, err = await check(config, "--connect")
    assert code == 1, err
    assert out.splitlines()[1:] == [
        "keycrm: reachable (HTTP 200, API key accepted)",
        'channel "pos": reachable (HTTP 400, credentials accepted)',
    ]
    assert err.splitlines() == [
        'channel "revoked": auth refused (HTTP 401 {"error": "Invalid or missing API token"})',
        'channel "moved": not found (HTTP 404: check base_url)',
        f'channel "dead": unreachable (127.0.0.1:{dead}: connection refused)',
    ]
    keycrm_asks = [(path, query) for _, path, query in world.keycrm.requests]
    assert keycrm_asks == [("/v1/offers/stocks", {"limit": "1"})]
    assert good.stock == {} and revoked.stock == {}
    for secret in world.secrets:
        assert secret not in out + err

    code, out, err = await check(world.write_config(channels=world.shop_table("pos")), "--connect")
    assert (code, err) == (0, "")


async def test_connect_names_a_refused_keycrm_key(world: World) -> None:
    await world.add_shop("pos")
    world.keycrm.api_key = "rotated-elsewhere"
    code, _, err = await check(world.write_config(), "--connect")
    assert code == 1
    assert err.strip() == "keycrm: auth refused (HTTP 401: check the API key)"


async def test_connect_says_when_the_key_cannot_read_orders_and_is_not_a_fault(
    world: World,
) -> None:
    await world.add_shop("pos")
    world.keycrm.orders.refusal = 403
    code, out, err = await check(world.write_config(order_feed="15s"), "--connect")
    assert (code, err) == (0, "")
    assert (
        "keycrm orders: refused (HTTP 403: the order feed will be off; scans and webhooks "
        "carry on)" in out.splitlines()
    )
