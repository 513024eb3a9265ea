"""`stocksync drift`: read back what each readable channel holds and compare it with the state.

stocksync trusts its record of what each channel acknowledged; a person in a seller portal, an
import or the channel's own order flow can change the value behind its back. This report reads
the acknowledged and desired values from the state file (never keyCRM) and asks each channel
that can be read back what it holds now. It changes nothing, and it paces its reads at a share
of each channel's `rate_limit`, because a running daemon is using the rest of it.

What counts as agreement or drift is `daemon.send.readback`'s, shared with the daemon's verify
passes. Items never acknowledged are not read: there is nothing to compare them with.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

import aiohttp
import anyio
import orjson
import structlog

from daemon.config.settings import ChannelConfig, Config
from daemon.core.channel import ChannelContext, Readable, readable
from daemon.core.models import Value
from daemon.send.readback import (
    ChannelDrift,
    Drifted,
    check_batch,
    check_channel,
    classify,
    recheck,
)
from daemon.store import Store, open_store

__all__ = [
    "DEFAULT_SHARE",
    "PROGRESS_EVERY",
    "ChannelDrift",
    "DriftReport",
    "Drifted",
    "build_report",
    "check_batch",
    "check_channel",
    "classify",
    "render_json",
    "render_text",
    "run_drift",
]

log = structlog.get_logger("stocksync.drift")

#: the share of a channel's rate limit the report may use; the daemon keeps the rest
#: seconds between `drift: read ...` progress lines on stderr
PROGRESS_EVERY = 5.0
DEFAULT_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Every readable channel's comparison, and the channels that cannot be read back."""

    channels: list[ChannelDrift]
    not_readable: list[str]

    @property
    def clean(self) -> bool:
        """Every acknowledged item was read and agrees: the exit status is 0."""
        return all(c.clean for c in self.channels)


async def _channel_report(
    channel: ChannelConfig,
    reader: Readable,
    store: Store,
    share: float,
    into: ChannelDrift,
    *,
    totals: dict[str, int],
) -> None:
    rows = await store.items(channel.name)
    totals[channel.name] = sum(1 for row in rows if row.acked is not None)
    await check_channel(reader, rows, rate=channel.rate * share, into=into)
    if into.drifted:
        recheck(into, await store.items(channel.name))


async def _progress(report: DriftReport, totals: dict[str, int], every: float, err: TextIO) -> None:
    """A `drift: ...` line every `every` seconds while the reads go on (they are paced: a
    channel of thousands of items takes minutes, and silence reads as a hang)."""
    while True:
        await anyio.sleep(every)
        read = ", ".join(
            f"{c.channel} {c.checked}/{totals.get(c.channel, '?')}" for c in report.channels
        )
        print(f"drift: read {read}", file=err, flush=True)


async def build_report(
    config: Config,
    store: Store,
    *,
    only: str | None = None,
    share: float = DEFAULT_SHARE,
    progress_every: float | None = None,
    err: TextIO = sys.stderr,
) -> DriftReport:
    """Compare every readable channel (or just `only`) with the state; channels side by side,
    with a progress line on `err` every `progress_every` seconds (None: quiet)."""
    chosen = [c for c in config.channels if only is None or c.name == only]
    report = DriftReport(channels=[], not_readable=[])
    async with aiohttp.ClientSession() as session:
        readers: list[tuple[ChannelConfig, Readable]] = []
        for channel in chosen:
            context = ChannelContext(channel.name, session, channel.timeout)
            reader = readable(channel.spec.build(channel.options, context))
            if reader is None:
                report.not_readable.append(channel.name)
            else:
                readers.append((channel, reader))
                report.channels.append(ChannelDrift(channel.name))
        totals: dict[str, int] = {}
        async with anyio.create_task_group() as progress:
            if progress_every is not None and readers:
                progress.start_soon(_progress, report, totals, progress_every, err)
            async with anyio.create_task_group() as group:
                for (channel, reader), into in zip(readers, report.channels, strict=True):
                    group.start_soon(
                        partial(_channel_report, totals=totals), channel, reader, store, share, into
                    )
            progress.cancel_scope.cancel()
    return report


# --- output ------------------------------------------------------------------------------------


def _value_json(value: Value) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if value.quantity is not None:
        out["quantity"] = value.quantity
    if value.price is not None:
        out["price"] = str(value.price.normalize())
    if value.live is not None:
        out["live"] = value.live
    return out


def render_json(report: DriftReport) -> str:
    """The report as one JSON document, for scripts and alerting."""
    channels = [
        {
            "channel": c.channel,
            "checked": c.checked,
            "in_agreement": c.agree,
            "drifted": [
                {
                    "key": d.key,
                    "desired": _value_json(d.desired),
                    "acknowledged": _value_json(d.acked),
                    "live": _value_json(d.live),
                }
                for d in c.drifted
            ],
            "missing": c.missing,
            "unreadable": c.unreadable,
            "unacknowledged": c.unacknowledged,
            "error": c.error,
        }
        for c in report.channels
    ]
    document = {"clean": report.clean, "channels": channels, "not_readable": report.not_readable}
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()


def render_text(report: DriftReport) -> str:
    """The report for a person: a summary line per channel, then one line per finding."""
    lines = []
    for c in report.channels:
        lines.append(
            f"{c.channel}: {c.checked} checked, {c.agree} in agreement, {len(c.drifted)} drifted, "
            f"{len(c.missing)} missing, {len(c.unreadable)} unreadable"
            + (f" ({c.unacknowledged} not yet acknowledged)" if c.unacknowledged else "")
        )
        for d in c.drifted:
            lines.append(
                f"  drifted     {d.key}  desired {d.desired.describe()}"
                f"  acknowledged {d.acked.describe()}  live {d.live.describe()}"
            )
        lines.extend(f"  missing     {key}" for key in c.missing)
        lines.extend(f"  unreadable  {key}" for key in c.unreadable)
        if c.error:
            lines.append(f"  last error  {c.error}")
    if report.not_readable:
        lines.append(
            f"{', '.join(report.not_readable)}: no read-back in the API "
            "(set reassert_interval to push acknowledged values again on a schedule)"
        )
    if not report.channels:
        lines.append("no channel can be read back: nothing to compare")
    return "\n".join(lines)


async def run_drift(
    config: Config,
    *,
    channel: str | None = None,
    as_json: bool = False,
    share: float = DEFAULT_SHARE,
    out: TextIO = sys.stdout,
    progress_every: float | None = PROGRESS_EVERY,
) -> int:
    """Print the report; 0 when every acknowledged item agrees, 1 otherwise, 2 for bad usage."""
    names = [c.name for c in config.channels]
    if channel is not None and channel not in names:
        print(f"no channel named {channel!r}; configured: {', '.join(names)}", file=sys.stderr)
        return 2
    if not 0 < share <= 1:
        print("--share must be above 0 and at most 1", file=sys.stderr)
        return 2
    if not config.daemon.state.exists():
        print(f"no state file at {config.daemon.state}", file=sys.stderr)
        return 2
    store = open_store(config.daemon.state)
    try:
        report = await build_report(
            config, store, only=channel, share=share, progress_every=progress_every
        )
    finally:
        await store.close()
    print(render_json(report) if as_json else render_text(report), file=out)
    return 0 if report.clean else 1
