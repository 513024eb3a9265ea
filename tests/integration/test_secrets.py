"""Secrets never stored or printed: a channel that echoes a credential, a rotated secret."""

from __future__ import annotations

import io
import secrets
import sqlite3
import sys

import aiohttp
import anyio
import pytest

from daemon.config.settings import secret_values
from daemon.shell.daemon import Daemon
from daemon.shell.logs import configure_logging
from tests.conftest import World, eventually, running
from tests.integration.test_sync import in_sync

pytestmark = pytest.mark.anyio


def echo(*credentials: str) -> bytes:
    """An error body that quotes back what the channel was sent, as careless APIs do."""
    return f'{{"error": "unknown product; you sent {" and ".join(credentials)}"}}'.encode()


async def rejected_rows(daemon: Daemon, skus: list[str], want: int) -> list[str]:
    """Wait until `want` history rows are rejections; their error texts."""
    assert daemon.store is not None
    with anyio.fail_after(10):
        while True:
            errors = [
                row.error or ""
                for sku in skus
                for row in await daemon.store.history(sku)
                if row.outcome == "rejected"
            ]
            if len(errors) >= want:
                return errors
            await anyio.sleep(0.02)


async def status_text(daemon: Daemon) -> str:
    url = f"http://127.0.0.1:{daemon.bound_port}/status"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def test_a_credential_a_channel_echoes_is_never_stored_or_printed(world: World) -> None:
    world.keycrm.populate(3)
    pos = await world.add_shop("pos")
    config = world.config()
    logs = io.StringIO()
    configure_logging(fmt="json", level="debug", secrets=secret_values(config), stream=logs)
    body = echo(f"Bearer {pos.token}", world.keycrm_key)
    pos.faults.add(500, body=body)  # retried: the text lands in the log and in /status
    pos.faults.add(404, body=body, times=2)  # rejected: the text lands in the history
    skus = [o.sku or "" for o in world.keycrm.offers.values()]
    daemon = Daemon(config, handle_signals=False)
    async with running(daemon):
        errors = await rejected_rows(daemon, skus, 2)
        status = await status_text(daemon)
    assert all("you sent Bearer *** and ***" in error for error in errors), errors
    history = ""
    for sku in skus:
        result = await anyio.run_process(
            [sys.executable, "-m", "daemon", "history", "-c", str(config.path), sku], check=False
        )
        assert result.returncode == 0, result.stderr.decode()
        history += result.stdout.decode() + result.stderr.decode()
    assert "you sent Bearer *** and ***" in history

    # A row written before the scrubber existed still prints masked: history scrubs its output
    # with every secret this shell can read from the file, without loading the whole config.
    with sqlite3.connect(config.daemon.state) as db:
        db.execute("UPDATE history SET error = ?", (f"raw {pos.token} and {world.keycrm_key}",))
    old = await anyio.run_process(
        [sys.executable, "-m", "daemon", "history", "-c", str(config.path), skus[0]], check=False
    )
    printed = old.stdout.decode() + old.stderr.decode()
    assert "raw *** and ***" in printed
    history += printed
    assert "you sent Bearer ***" in logs.getvalue()
    for secret in world.secrets:
        for text in (*errors, status, history, logs.getvalue()):
            assert secret not in text


async def test_a_rotated_secret_is_scrubbed_after_a_reload(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.keycrm.populate(2)
    pos = await world.add_shop("pos")
    config = world.config()
    logs = io.StringIO()
    configure_logging(fmt="json", level="debug", secrets=secret_values(config), stream=logs)
    skus = [o.sku or "" for o in world.keycrm.offers.values()]
    daemon = Daemon(config, reload=world.config, handle_signals=False)
    async with running(daemon):
        await eventually(lambda: in_sync(world))
        rotated = "pos-rotated-" + secrets.token_hex(8)
        monkeypatch.setenv("T_TOKEN_POS", rotated)
        pos.token = rotated
        pos.faults.add(500, body=echo(rotated))
        pos.faults.add(404, body=echo(rotated), times=2)
        await daemon.reload()  # a reload resyncs: every item is pushed again with the new token
        errors = await rejected_rows(daemon, skus, 2)
        status = await status_text(daemon)
    assert all("you sent ***" in error for error in errors), errors
    assert "you sent ***" in logs.getvalue()
    for text in (*errors, status, logs.getvalue()):
        assert rotated not in text
