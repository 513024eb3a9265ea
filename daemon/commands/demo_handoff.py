"""What `stocksync demo` shows its user: the lines to copy, again on demand, and a heartbeat.

The demo's log goes to `demo.log` in its folder (some fifty lines a second would scroll the
lines to copy away within minutes), so the terminal keeps the hand-off in view. Enter prints
it again; every `HEARTBEAT` seconds one line says what the shop floor did and what each
channel still has to acknowledge. The Prometheus config it writes scrapes the demo, loads the
shipped alert rules (copied beside it), and the printed command listens on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shlex
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio

__all__ = ["HEARTBEAT", "Tally", "handoff", "heartbeat", "reprint_on_enter", "shipped_rules"]

#: seconds between the terminal's one-line summaries
HEARTBEAT = 30.0

_RULES = Path("deploy") / "prometheus" / "alerts.yml"

_PROMETHEUS = """\
# Prometheus scraping the demo, with stocksync's alert rules:
#   prometheus --config.file={path} --web.listen-address=127.0.0.1:9090
global:
  scrape_interval: 5s
  evaluation_interval: 5s
{rules}scrape_configs:
  - job_name: stocksync
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@dataclass(slots=True)
class Tally:
    """What the demo's shop floor has done so far (for the heartbeat)."""

    orders: int = 0
    restocks: int = 0
    hand_edits: int = 0


def shipped_rules() -> Path | None:
    """`deploy/prometheus/alerts.yml` of the source this runs from (a checkout, or the folder
    `pip install .` ran in), or None when neither has it."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / _RULES).is_file():
            return root / _RULES
    return None


def _command() -> str:
    """How this process was started: `stocksync`, or `python -m daemon` from a checkout."""
    started = Path(sys.argv[0])
    if started.name == "stocksync":
        # Bare only when another shell finds this same program (an activated venv, a package);
        # else the full path, so the lines work as printed after `.venv/bin/stocksync demo`.
        found = shutil.which("stocksync")
        if found is not None and Path(found).resolve() == started.resolve():
            return "stocksync"
        return shlex.quote(str(started.resolve()))
    return f"{shlex.quote(sys.executable)} -m daemon"


def _prometheus_config(folder: Path, port: int) -> Path:
    """prometheus.yml in the demo's folder, with the shipped rules copied beside it."""
    path = folder / "prometheus.yml"
    source = shipped_rules()
    rules = "# no alert rules here: add deploy/prometheus/alerts.yml of stocksync's source\n"
    if source is not None:
        shutil.copyfile(source, folder / "alerts.yml")
        rules = "rule_files:\n  - alerts.yml\n"
    path.write_text(_PROMETHEUS.format(path=path, port=port, rules=rules), encoding="utf-8")
    return path


def handoff(folder: Path, config: Path, base: str, sku: str, *, port: int, log: Path) -> str:
    """The lines an operator copies into a second terminal (written files included)."""
    cmd = _command()
    prometheus = _prometheus_config(folder, port)
    secrets_env = folder / "secrets.env"
    q = shlex.quote
    return (
        "In another terminal, copy these lines:\n"
        f"  export STOCKSYNC_CONFIG={q(str(config))}\n"
        f"  {cmd} status\n"
        f"  {cmd} status --watch\n"
        f"  {cmd} history {q(sku)}\n"
        f"  {cmd} resync\n"
        f"  (. {q(str(secrets_env))} && {cmd} drift)\n"
        f"  curl -s {base}/metrics | grep ^stocksync_\n"
        f"  prometheus --config.file={q(str(prometheus))} --storage.tsdb.path="
        f"{q(str(folder / 'prometheus-data'))} --web.listen-address=127.0.0.1:9090\n"
        f"  tail -f {q(str(log))}\n"
        "Press Enter here to see these lines again.\n"
    )


async def reprint_on_enter(text: str, out: TextIO, stdin: TextIO | None = None) -> None:
    """Print `text` again each time a line arrives on stdin; return at its end (or at once
    when stdin cannot be watched: a file, /dev/null, none)."""
    try:
        fd = (stdin or sys.stdin).fileno()
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        loop.add_reader(fd, wake.set)
    except (AttributeError, OSError, ValueError, NotImplementedError):
        return
    try:
        while True:
            await wake.wait()
            wake.clear()
            try:
                # The reader callback may have fired again after the last read: read only
                # what is there (stdin stays blocking: it is the terminal's, shared).
                if not select.select([fd], [], [], 0)[0]:
                    continue
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            if b"\n" in data:
                print(text, file=out, flush=True)
    finally:
        loop.remove_reader(fd)


def _summary(tally: Tally, status: dict[str, Any]) -> str:
    channels = status.get("channels", {})
    pending = ", ".join(f"{name} {ch.get('pending', 0)}" for name, ch in channels.items())
    return (
        f"{time.strftime('%H:%M:%S')}  shop floor: {tally.orders} orders, {tally.restocks} "
        f"restocks, {tally.hand_edits} hand edits; pending: {pending or '-'}  "
        "(Enter: the lines to copy)"
    )


async def heartbeat(
    tally: Tally,
    status: Callable[[], Awaitable[dict[str, Any]]],
    out: TextIO,
    every: float = HEARTBEAT,
) -> None:
    """One line every `every` seconds: what the shop floor did, what each channel still owes."""
    while True:
        await anyio.sleep(every)
        with contextlib.suppress(Exception):  # a summary is never worth stopping the demo for
            print(_summary(tally, await status()), file=out, flush=True)
