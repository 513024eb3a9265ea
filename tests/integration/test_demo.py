"""The demo as a new user meets it: run it, copy what it printed into another shell, it works."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import anyio
import orjson
import pytest

pytestmark = pytest.mark.anyio


async def shell(line: str, exports: list[str], *, check: bool = True) -> tuple[int, str, str]:
    """One copied line in a fresh shell that has only what the demo told us to export."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKSYNC", "T_"))}
    script = "\n".join([*exports, line])
    result = await anyio.run_process(["bash", "-c", script], env=env, check=False)
    out, err = result.stdout.decode(), result.stderr.decode()
    if check:
        assert result.returncode == 0, f"{line}\n{out}\n{err}"
    return result.returncode, out, err


async def test_the_commands_the_demo_prints_work_in_another_shell(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    demo = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "daemon",
            "demo",
            "--port",
            "0",
            "--skus",
            "8",
            "--state-dir",
            str(folder),
        ]
    )
    assert demo.stdout is not None and demo.stderr is not None and demo.stdin is not None
    printed = ""
    stderr = b""
    try:
        async with anyio.create_task_group() as group:

            async def drain_logs() -> None:
                nonlocal stderr
                async for chunk in demo.stderr:  # type: ignore[union-attr]
                    stderr += chunk

            group.start_soon(drain_logs)
            with anyio.fail_after(30):
                while "Press Enter" not in printed:
                    printed += (await demo.stdout.receive()).decode()  # type: ignore[union-attr]
            # Issue 22: the log goes to a file, and Enter prints the lines to copy again.
            await demo.stdin.send(b"\n")
            again = ""
            with anyio.fail_after(10):
                while "Press Enter" not in again:
                    again += (await demo.stdout.receive()).decode()  # type: ignore[union-attr]
            assert "In another terminal, copy these lines:" in again
            block = printed.split("In another terminal, copy these lines:\n", 1)[1]
            lines = [line.strip() for line in block.splitlines() if line.startswith("  ")]
            exports = [line for line in lines if line.startswith("export ")]
            commands = [line for line in lines if not line.startswith("export ")]
            assert exports, printed
            by_verb = {
                next(
                    w
                    for w in (
                        "--watch",
                        "status",
                        "history",
                        "resync",
                        "drift",
                        "curl",
                        "prometheus",
                        "tail",
                    )
                    if w in line
                ): line
                for line in commands
            }

            _, out, _ = await shell(by_verb["status"], exports)
            assert "ready" in out and "shop-pos" in out and "klump" in out

            with anyio.fail_after(30):
                while True:
                    _, out, _ = await shell(by_verb["history"], exports)
                    if "no pushes recorded" not in out:
                        break
                    await anyio.sleep(0.2)
            assert " -> " in out and " ok" in out

            with anyio.fail_after(30):  # no webhook: the order feed carries the sales
                while True:
                    _, out, _ = await shell(by_verb["status"] + " --json", exports)
                    if orjson.loads(out)["source"]["order_feed"]["skus_queued"]:
                        break
                    await anyio.sleep(0.5)

            _, out, _ = await shell(by_verb["resync"], exports)
            assert out.startswith("resync started")

            code, out, err = await shell(by_verb["drift"], exports, check=False)
            assert code in (0, 1), err  # 1: the shop floor edits Marketplacer by hand
            assert "marketplacer: " in out

            _, out, _ = await shell(by_verb["status"] + " --json", exports)
            assert set(orjson.loads(out)["channels"]) == {
                "shop-pos",
                "klump",
                "marketplacer",
                "ordergroove",
            }

            watch = by_verb["--watch"] + " --interval 0.2 | head -n 3"
            _code, out, err = await shell(watch, exports, check=False)
            assert out.splitlines()[0].startswith("every 0.2s")
            assert "Traceback" not in err

            if shutil.which("curl"):
                _, out, _ = await shell(by_verb["curl"], exports)
                assert "stocksync_build_info" in out
            config = by_verb["prometheus"].split("--config.file=", 1)[1].split()[0]
            promtool = shutil.which("promtool")
            if promtool:
                await shell(f"{promtool} check config {config}", exports)  # rules included
            prometheus = await anyio.Path(config).read_text()
            assert "127.0.0.1:" in prometheus and "rule_files:\n  - alerts.yml" in prometheus
            assert "StocksyncKeycrmDown" in (folder / "alerts.yml").read_text()
            assert "--web.listen-address=127.0.0.1:" in by_verb["prometheus"]
            log = by_verb["tail"].split("tail -f ", 1)[1]
            assert "demo.order_placed" in await anyio.Path(log).read_text()
            assert b"demo.order_placed" not in stderr

            demo.send_signal(signal.SIGINT)
            with anyio.fail_after(20):
                assert await demo.wait() == 0
            group.cancel_scope.cancel()
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    # --state-dir keeps the state (and the config) after the demo ends
    assert (folder / "stocksync.db").exists()
    assert (folder / "stocksync.toml").exists()


async def test_a_demo_on_a_taken_port_says_how_to_pick_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await anyio.run_process(
            [sys.executable, "-m", "daemon", "demo", "--port", str(port), "--duration", "5"],
            check=False,
        )
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "--port 0" in err
    assert "Traceback" not in err
