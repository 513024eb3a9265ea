"""The holds of the mass-change guard: per channel, from the scan that tripped it to its end.

A scan's guard (`daemon.rules.guard.ScanGuard`) holds every zero it plans until the scan ends. Then
`verdict` decides per channel: no more zeroes than the guard allows, and they go out; more, and
the channel is *on hold*: every held zero stays held, zeroes later scans hold join them, and
only two things end it. An operator releases the hold by name (`stocksync guard release`,
`POST /admin/guard/release`, recorded per item in the history), or keyCRM shows stock again
for every held item (each one leaves `held` as its stock comes back, `lifecycle.desire`).
Scans that keep agreeing are no evidence (a glitching keyCRM agrees with itself), and a resync
re-applies the guard; neither releases anything.

The items are `held` in the store; what a person needs about the hold (since when, why) is
kept beside them in the state's meta table (`guard_hold:CHANNEL`), so it survives restarts
and every replica on a shared state reads the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
import structlog

from daemon.core.telemetry import MerchantMetrics
from daemon.rules.guard import ScanGuard
from daemon.store import Store

__all__ = ["Hold", "Holds"]

log = structlog.get_logger("stocksync.guard")

_META = "guard_hold:"


@dataclass(frozen=True, slots=True)
class Hold:
    """A channel on hold: since when, and why (the scan that tripped the guard)."""

    since: float
    reason: str

    def encode(self) -> str:
        return orjson.dumps({"since": self.since, "reason": self.reason}).decode()

    @classmethod
    def decode(cls, text: str | None) -> Hold | None:
        if not text:
            return None
        data = orjson.loads(text)
        return cls(float(data["since"]), str(data["reason"]))


class Holds:
    """Decides each scan's verdict and keeps each channel's hold (module docstring)."""

    def __init__(
        self,
        store: Store,
        channels: Sequence[str],
        metrics: MerchantMetrics,
        *,
        wake: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._channels = channels
        self._metrics = metrics
        self._wake = wake
        self._clock = clock
        # A scan, a re-plan and a catalog pass may end or trip side by side: each decision reads
        # the hold and then writes it, so one at a time (else both begin the same hold and it is
        # logged and counted twice).
        self._deciding = anyio.Lock()

    async def get(self, channel: str) -> Hold | None:
        return Hold.decode(await self._store.get_meta(_META + channel))

    async def _set(self, channel: str, hold: Hold | None) -> None:
        await self._store.set_meta(_META + channel, "" if hold is None else hold.encode())

    async def trip_early(self, guard: ScanGuard, channel: str) -> None:
        """Mid-scan: once this scan alone has held more zeroes than the channel may lose, the
        hold begins now (the page and `/status` need not wait for a long scan's end)."""
        async with self._deciding:
            if guard.trips(channel, guard.held[channel]) and await self.get(channel) is None:
                await self._begin(guard, channel, guard.held[channel])

    async def verdict(self, guard: ScanGuard, *, final: bool) -> None:
        """A scan (or re-plan, or catalog pass) ended. Per channel: a hold goes on (the zeroes
        this pass held join it) or ends when nothing is held any more; without a hold, the held
        zeroes become one when they are a mass change, and go out when they are not and
        `final` (a complete pass, and no other pass running that may still add to them)."""
        async with self._deciding:
            await self._verdict(guard, final=final)

    async def _verdict(self, guard: ScanGuard, *, final: bool) -> None:
        counts = await self._store.counts()
        for channel in self._channels:
            held = counts.get(channel, {}).get("held", 0)
            hold = await self.get(channel)
            joined = guard.held[channel] - guard.reported[channel]
            guard.reported[channel] = guard.held[channel]
            if hold is not None:
                if held == 0:
                    await self._set(channel, None)
                    log.info("guard.hold_ended", channel=channel, since=_iso(hold.since))
                elif joined:
                    self._metrics.guard_blocked.labels(channel=channel).inc(joined)
                    log.error(
                        "guard.zeroes_held",
                        channel=channel,
                        held=held,
                        joined=joined,
                        since=_iso(hold.since),
                        reason=hold.reason,
                        hint="held until released: stocksync guard release --channel " + channel,
                    )
            elif held and guard.trips(channel, held):
                await self._begin(guard, channel, held)
            elif held and final:
                released = await self._store.release_held(channel, self._clock())
                if released:
                    log.info("guard.zeroes_passed", channel=channel, items=sum(released.values()))
                    self._wake(channel)

    async def _begin(self, guard: ScanGuard, channel: str, held: int) -> None:
        hold = Hold(self._clock(), guard.reason(channel, held))
        await self._set(channel, hold)
        # Count only what this pass held: zeroes another pass still running holds (a re-plan
        # beside a scan) are in `held` too, and that pass counts them at its own verdict.
        own = guard.held[channel] - guard.reported[channel]
        guard.reported[channel] = guard.held[channel]
        if own:
            self._metrics.guard_blocked.labels(channel=channel).inc(own)
        log.error(
            "guard.zeroes_held",
            channel=channel,
            held=held,
            allowed=guard.allowed.get(channel),
            reason=hold.reason,
            hint="every one is held until an operator releases them (stocksync guard release "
            f"--channel {channel}) or keyCRM shows their stock again; a resync does not",
        )

    async def release(self, channel: str | None, by: str) -> dict[str, int]:
        """An operator releases the held zeroes of one channel (all with None): they go out
        now, and each one is recorded in the history as `released` with `by`."""
        async with self._deciding:
            return await self._release(channel, by)

    async def _release(self, channel: str | None, by: str) -> dict[str, int]:
        released = await self._store.release_held(channel, self._clock(), by=by)
        for name in self._channels if channel is None else [channel]:
            hold = await self.get(name)
            if hold is not None:
                await self._set(name, None)
            if released.get(name) or hold is not None:
                log.warning(
                    "guard.released",
                    channel=name,
                    items=released.get(name, 0),
                    by=by,
                    since=None if hold is None else _iso(hold.since),
                )
            if released.get(name):
                self._wake(name)
        return released

    async def report(self, counts: dict[str, dict[str, int]]) -> dict[str, dict[str, Any] | None]:
        """Per channel, its hold as `/status` shows it (None: not on hold)."""
        out: dict[str, dict[str, Any] | None] = {}
        for channel in self._channels:
            hold = await self.get(channel)
            held = counts.get(channel, {}).get("held", 0)
            out[channel] = (
                None
                if hold is None
                else {"held": held, "since": _iso(hold.since), "reason": hold.reason}
            )
        return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
