"""A realistic run, start to stop, and every byte it let out scanned for every secret it knew.

`stocksync run` in a subprocess at debug level against the four fake channels, with channels
that echo our credentials back in their errors, webhooks with right and wrong tokens, malformed
requests carrying the token, admin calls with right, wrong and undecodable tokens, a secret
rotated by SIGHUP, a resync by SIGUSR1, and the operator's commands. Then: the daemon's stdout
and stderr, every HTTP answer, every command's output and the state file itself must contain
no secret value, in any spelling.
"""

from __future__ import annotations

import json
import secrets
import signal
import sys
from pathlib import Path
from urllib.parse import quote

import aiohttp
import anyio
import pytest
from anyio.abc import Process

from tests.conftest import World
from tests.integration.test_four_channels import setup
from tests.integration.test_listener import exchange

pytestmark = pytest.mark.anyio


def echo(*credentials: str) -> bytes:
    return json.dumps({"error": f"bad request; you sent {' '.join(credentials)}"}).encode()


class Run:
    """The daemon's subprocess and everything that came out of it or of talking to it."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.logs = ""
        self.seen: list[str] = []
        self.port = 0

    async def collect(self, stream: anyio.abc.ByteReceiveStream) -> None:
        async for chunk in stream:
            self.logs += chunk.decode(errors="replace")
            if not self.port:
                for line in self.logs.splitlines():
                    if '"http.listening"' in line:
                        self.port = json.loads(line)["port"]

    async def get(self, session: aiohttp.ClientSession, path: str) -> str:
        async with session.get(f"http://127.0.0.1:{self.port}{path}") as response:
            text = await response.text()
        self.seen.append(text)
        return text

    async def post(
        self, session: aiohttp.ClientSession, path: str, **kwargs: object
    ) -> tuple[int, str]:
        async with session.post(f"http://127.0.0.1:{self.port}{path}", **kwargs) as response:  # type: ignore[arg-type]
            text = await response.text()
        self.seen.append(text)
        return response.status, text

    async def until(self, check: str, path: str, session: aiohttp.ClientSession) -> None:
        with anyio.fail_after(30):
            while check not in await self.get(session, path):
                await anyio.sleep(0.1)


def state_bytes(folder: Path) -> bytes:
    """The state file and its write-ahead log, as stored."""
    return b"".join(path.read_bytes() for path in sorted(folder.glob("state.db*")))


async def command(*args: str) -> str:
    result = await anyio.run_process([sys.executable, "-m", "daemon", *args], check=False)
    return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")


async def test_nothing_a_realistic_run_lets_out_contains_a_secret(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    shops, channels = await setup(world, monkeypatch, skus=6)
    pos = world.shops["pos"]
    token_file = world.tmp_path / "pos-token"
    token_file.write_text(pos.token, encoding="utf-8")
    channels = channels.replace('token_env = "T_TOKEN_POS"', f'token_file = "{token_file}"', 1)
    everything = " ".join(world.secrets)
    pos.faults.add(500, body=echo(everything))
    pos.faults.add(404, body=echo(everything), times=2)
    shops.klump.faults.add(400, body=echo(everything))
    shops.marketplacer.faults.add(503, body=echo(everything), retry_after="0")
    config = world.write_config(channels=channels, daemon='log_level = "debug"')
    outputs: list[str] = []
    rotated = "pos-rotated-" + secrets.token_hex(8)
    hook = f"/webhooks/keycrm/{world.webhook_token}"

    async with (
        await anyio.open_process(
            [sys.executable, "-m", "daemon", "run", "-c", str(config)], stdin=-1
        ) as process,
        anyio.create_task_group() as group,
        aiohttp.ClientSession() as session,
    ):
        run = Run(process)
        assert process.stdout is not None and process.stderr is not None
        group.start_soon(run.collect, process.stdout)
        group.start_soon(run.collect, process.stderr)
        with anyio.fail_after(30):
            while not run.port:
                await anyio.sleep(0.05)
        await run.until('"rejected": 2', "/status", session)

        # The webhook, right and wrong, and requests aiohttp itself refuses.
        assert (await run.post(session, hook, json=[{"sku": "SKU-00001"}]))[0] == 202
        assert (await run.post(session, hook, data=b"not json"))[0] == 400
        assert (await run.post(session, "/webhooks/keycrm/guess", json=[]))[0] == 404
        for raw in (
            f"POST {hook} HTTP/1.1\r\nBad Header\r\n\r\n".encode(),
            f"POST {hook}\x01 HTTP/1.1\r\n\r\n".encode(),
            f"GET /{quote(world.admin_token)} HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n".encode(),
        ):
            run.seen.append((await exchange(run.port, raw)).decode(errors="replace"))
        # Admin calls: right, wrong, undecodable.
        for value in (f"Bearer {world.admin_token}", "Bearer nope", "Bearer caf\u00e9"):
            status, _ = await run.post(session, "/admin/resync", headers={"Authorization": value})
            assert status == (202 if world.admin_token in value else 401)

        # A secret rotated under a running daemon, and a channel echoing the new one.
        token_file.write_text(rotated, encoding="utf-8")
        pos.token = rotated
        pos.faults.add(404, body=echo(rotated), times=2)
        process.send_signal(signal.SIGHUP)
        await run.until('stocksync_config_reloads_total{result="ok"} 1.0', "/metrics", session)
        with anyio.fail_after(30):
            while pos.faults.queued:
                await anyio.sleep(0.05)
        process.send_signal(signal.SIGUSR1)
        await run.get(session, "/readyz")
        status_text = await run.get(session, "/status")

        # What an operator runs meanwhile.
        outputs.append(await command("status", "-c", str(config)))
        outputs.append(await command("resync", "-c", str(config)))
        outputs.append(await command("check-config", "-c", str(config), "--connect"))
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await process.wait() == 0
    for sku in ("SKU-00001", "SKU-00002", "SKU-00003"):
        outputs.append(await command("history", "-c", str(config), sku))

    # The run did what makes leaks likely: echoes were taken in, masked, and kept.
    assert "you sent ***" in run.logs
    assert "you sent ***" in "".join(outputs)
    assert '"channels"' in status_text
    state = state_bytes(world.tmp_path)
    assert b"you sent ***" in state

    texts = [run.logs, *run.seen, *outputs, state.decode(errors="replace")]
    for secret in [*world.secrets, rotated]:
        for spelling in {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}:
            for text in texts:
                assert spelling not in text, f"{secret[:4]}... leaked"
