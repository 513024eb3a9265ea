"""Read-back: ask a readable channel what it holds, and file each item as agreeing or drifted.

Shared by the daemon's verify passes (`daemon.send.verify`, which heal drift) and `stocksync
drift` (`daemon.commands.drift`, which only reports it). An item is *in agreement* when the
channel holds its acknowledged value, or its desired value (a push that landed after the state
was read); *drifted* when it holds something else; *missing* when the channel does not know it;
*unreadable* when the channel gave no comparable answer. Reads are paced by the caller's limiter
and retried a few times for answers worth retrying.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import structlog
from aiolimiter import AsyncLimiter

from daemon.core.channel import Readable
from daemon.core.errors import ChannelError, ChannelFatal, ChannelRetryable
from daemon.core.models import Value
from daemon.store import ItemRow

__all__ = ["ChannelDrift", "Drifted", "check_batch", "check_channel", "classify", "recheck"]

log = structlog.get_logger("stocksync.drift")

ATTEMPTS = 3  # per batch, for answers worth retrying
MAX_WAIT = 10.0  # seconds: a longer Retry-After leaves the batch unreadable, not the report hung


@dataclass(frozen=True, slots=True)
class Drifted:
    """One item whose channel holds neither the acknowledged nor the desired value."""

    key: str
    desired: Value
    acked: Value
    live: Value


@dataclass(slots=True)
class ChannelDrift:
    """What one channel holds compared with the state."""

    channel: str
    checked: int = 0
    agree: int = 0
    drifted: list[Drifted] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    #: items the channel never acknowledged: not read
    unacknowledged: int = 0
    #: why some reads failed (the last such answer), if any did
    error: str | None = None

    @property
    def clean(self) -> bool:
        return not (self.drifted or self.missing or self.unreadable)


def classify(row: ItemRow, live: Value | None, into: ChannelDrift) -> None:
    """File one read-back value under agreement, drift or missing. Pure."""
    assert row.acked is not None
    if live is None:
        into.missing.append(row.key)
    elif live in (row.acked, row.desired):
        into.agree += 1
    else:
        into.drifted.append(Drifted(row.key, row.desired, row.acked, live))


async def _read(
    reader: Readable,
    keys: Sequence[str],
    limiter: AsyncLimiter,
    into: ChannelDrift,
    pace: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Value | None]:
    """One batch, retried a little; a batch that cannot be read is reported, never raised."""
    for attempt in range(ATTEMPTS):
        await limiter.acquire()  # every attempt is a request: retries are paced too
        if pace is not None:
            await pace()
        try:
            return await reader.read(keys)
        except ChannelRetryable as exc:
            wait = exc.retry_after if exc.retry_after is not None else 0.5 * 2**attempt
            if attempt == ATTEMPTS - 1 or wait > MAX_WAIT:
                into.error = str(exc)
                break
            await anyio.sleep(wait)
        except ChannelFatal:
            raise
        except ChannelError as exc:  # rejected: this batch only
            into.error = str(exc)
            break
    return {}


async def check_channel(
    reader: Readable, rows: Sequence[ItemRow], *, rate: float, into: ChannelDrift
) -> None:
    """Read every acknowledged item of one channel, `rate` requests a second at most."""
    wanted = [row for row in rows if row.acked is not None]
    into.unacknowledged += len(rows) - len(wanted)
    limiter = AsyncLimiter(1, 1.0 / rate)  # one request at a time, evenly spaced
    batch = max(1, reader.max_read_batch)
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        try:
            await check_batch(reader, chunk, limiter, into)
        except ChannelFatal as exc:  # credentials or scope: every further read would fail too
            into.error = str(exc)
            into.unreadable.extend(row.key for row in wanted[start:])
            into.checked += len(wanted) - start
            log.warning("drift.channel_refused", channel=into.channel, error=str(exc))
            return


async def check_batch(
    reader: Readable,
    chunk: Sequence[ItemRow],
    limiter: AsyncLimiter,
    into: ChannelDrift,
    *,
    pace: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Read one batch of acknowledged items and file each under agreement, drift, missing or
    unreadable. `pace` also waits for a request slot of a running daemon's channel.
    Raises `ChannelFatal` when the channel refuses us as a whole."""
    values = await _read(reader, [row.key for row in chunk], limiter, into, pace)
    into.checked += len(chunk)
    for row in chunk:
        if row.key in values:
            classify(row, values[row.key], into)
        else:
            into.unreadable.append(row.key)


def recheck(into: ChannelDrift, fresh: Sequence[ItemRow]) -> None:
    """Drop drift explained by a push the daemon made while the report was reading."""
    now = {row.key: row for row in fresh}
    still = []
    for item in into.drifted:
        row = now.get(item.key)
        if row is not None and item.live in (row.acked, row.desired):
            into.agree += 1
        else:
            still.append(item)
    into.drifted = still
