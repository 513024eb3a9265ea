"""One worker per channel: claims due items from the store, paces them, settles outcomes.

The store owns the work queue: the worker asks it for due items (`claim`), which come back
`sending`, so nothing in memory can send a held, acknowledged or rejected item, and at most one
request per item is ever under way. Per channel: a pacer that holds the rate by schedule
(`daemon/send/pacer.py`: late wake-ups are made up, at most 2 back to back, never a second's
allowance at once), a bounded number of requests in flight, a timeout per request. Retries are
not loops around a request: a retryable item goes back to the store with its next attempt time
(exponential backoff, full jitter, or the channel's Retry-After), so a restart keeps the
schedule. A 429/503 with Retry-After, or a 401/403, pauses
the whole channel; the others never notice. A batch the channel refuses as a whole for its
content is split in halves until the poison item stands alone, so it cannot hold its
neighbours back.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import structlog

from daemon.config.settings import ChannelConfig
from daemon.core.channel import Channel
from daemon.core.errors import (
    ChannelError,
    ChannelFatal,
    ChannelRejected,
    ChannelRetryable,
    StateError,
    StoreUnavailable,
)
from daemon.core.models import ItemValue, Outcome, PushResult, Value, Verdict
from daemon.core.redact import scrub_text
from daemon.core.retry_after import MAX_RETRY_AFTER
from daemon.core.telemetry import MerchantMetrics
from daemon.send.pacer import Pacer
from daemon.store import Store, Timing

__all__ = ["Dispatcher", "backoff_delay"]

log = structlog.get_logger("stocksync.dispatch")

BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
PROBE_BASE = 15.0
PROBE_CAP = 300.0
STORE_RETRY = 5.0


def backoff_delay(attempt: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * math.pow(2, min(attempt, 32)))
    return random.uniform(0, ceiling)  # noqa: S311 (jitter, not a secret)


class _NoAnswer(ChannelRetryable):
    """A request that got no answer within the channel's timeout: its outcome is unknown."""


@dataclass(slots=True)
class ChannelHealth:
    """What `/status` shows about a channel's own state."""

    paused_until: float = 0.0
    down: bool = False
    last_error: str | None = None
    failures_in_a_row: int = 0


class Dispatcher:
    """Pushes one channel's due items until cancelled, or until drained when asked to stop."""

    def __init__(
        self,
        config: ChannelConfig,
        channel: Channel,
        store: Store,
        timing: Timing,
        metrics: MerchantMetrics,
        *,
        batch_window: float = 0.0,
        may_push: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.name = config.name
        self.timing = timing
        self.batch_window = batch_window
        self._may_push = may_push
        self._channel = channel
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._limiter = Pacer(config.rate)
        self._slots = anyio.Semaphore(config.concurrency)
        self._wake = anyio.Event()
        self.health = ChannelHealth()
        #: items claimed by this worker whose push has not settled yet
        self.in_flight = 0
        #: claimed items the store could not take back yet (it was failing)
        self._orphans: set[str] = set()
        self._tally: Counter[str] = Counter()
        self._log = log.bind(channel=self.name)
        #: the last claim took a full batch: more is likely due, so the next turn skips asking
        #: the store when work is next due (one store call and hand-off fewer per batch)
        self._full = False

    async def report(self, every: float = 10.0) -> None:
        """One info line per `every` seconds while pushes happen: counts, not a line per SKU."""
        while True:
            await anyio.sleep(every)
            done, self._tally = self._tally, Counter()
            if done:
                self._log.info(
                    "channel.progress",
                    acknowledged=done["ok"],
                    retried=done["retry"],
                    rejected=done["rejected"],
                    in_flight=self.in_flight,
                    up=not self.health.down,
                )

    @property
    def adapter(self) -> Channel:
        """The channel adapter this worker pushes through."""
        return self._channel

    async def pace(self) -> None:
        """Wait for a request slot of this channel (read-back takes its requests from the same
        allowance as pushes, so together they keep the channel's rate limit)."""
        await self._limiter.acquire()

    def notify(self) -> None:
        """New work may be due: wake the worker."""
        self._wake.set()

    async def _sleep_until_work(self) -> None:
        event = self._wake
        now = self._clock()
        wake_at = await self._store.next_due(self.name)
        if self.health.paused_until > now:
            wake_at = (
                self.health.paused_until
                if wake_at is None
                else max(wake_at, self.health.paused_until)
            )
        if wake_at is not None and wake_at <= now:
            return
        with anyio.move_on_after(None if wake_at is None else wake_at - now):
            await event.wait()
        if event.is_set() and event is self._wake:
            self._wake = anyio.Event()

    async def run(self) -> None:
        """The worker loop; runs until cancelled."""
        async with anyio.create_task_group() as group:
            while True:
                try:
                    await self._put_back_orphans()
                    if not self._full:
                        await self._sleep_until_work()
                except StoreUnavailable:
                    await anyio.sleep(STORE_RETRY)  # the store logs the episode once
                    continue
                finally:
                    self._full = False
                if self.health.paused_until > self._clock():
                    continue
                if self.health.down and self.in_flight:
                    # While down, one request at a time probes the channel; the rest wait for it.
                    await self._one_finished()
                    continue
                try:
                    await self._fill_batch()
                except StoreUnavailable:
                    continue
                await self._slots.acquire()
                limit = 1 if self.health.down else self.config.batch_size
                slots = 1 if self.health.down else 1 + self._spare_slots()
                try:
                    items = await self._store.claim(self.name, self._clock(), limit * slots)
                except StoreUnavailable:
                    items = []
                    await anyio.sleep(STORE_RETRY)
                batches = [items[start : start + limit] for start in range(0, len(items), limit)]
                for _ in range(slots - len(batches)):
                    self._slots.release()
                # Not while down: a probe's claim of one is full, yet the channel may be failing.
                self._full = len(items) == limit * slots and not self.health.down
                for batch in batches:
                    self.in_flight += len(batch)
                    group.start_soon(self._send, batch)

    def _spare_slots(self) -> int:
        """Take every other request slot free now: one claim fills them all. Claims are one at
        a time, so a store whose claim takes a round trip (PostgreSQL: ~2-8 ms under load)
        would otherwise cap a channel at a batch per round trip, whatever its concurrency; a
        slot freed while a claim was under way is filled by the next one with the others.
        The requests still go one per slot, each through the pacer."""
        taken = 0
        while True:
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                return taken
            taken += 1

    async def _fill_batch(self) -> None:
        """A batching channel waits `batch_window` for a batch to fill before sending a few:
        at 100 changes a second, one request carries tens of items instead of one each."""
        size = self.config.batch_size
        if size <= 1 or self.batch_window <= 0 or self.health.down:
            return
        if await self._store.count_due(self.name, self._clock(), size) < size:
            await anyio.sleep(self.batch_window)

    async def _put_back_orphans(self) -> None:
        """Claims that could not be settled while the store was failing: pushed again now."""
        if self._orphans:
            keys = sorted(self._orphans)
            now = self._clock()
            await self._store.release(
                self.name, keys, now, self.timing, not_before=now + self.config.timeout
            )
            self._orphans.difference_update(keys)

    async def _one_finished(self) -> None:
        event = self._wake
        await event.wait()
        if event is self._wake:
            self._wake = anyio.Event()

    async def drain(self, deadline: float) -> bool:
        """Send what is debounced now and wait for it, until `deadline`; True if all went out."""
        await self._store.flush(self.name, self._clock())
        self.notify()
        while self._clock() < deadline:
            due = await self._store.next_due(self.name)
            paused = self.health.paused_until > deadline
            if self.in_flight == 0 and (due is None or due > deadline or paused):
                return due is None
            await anyio.sleep(0.05)
        return False

    async def _send(self, items: list[ItemValue]) -> None:
        unsettled = {item.key for item in items}
        try:
            await self._push(items, unsettled)
        except StateError:
            pass  # not acknowledged: pushed again once the store can write (at least once)
        except Exception:
            self._log.exception("channel.settle_failed")
        finally:
            if unsettled:
                # Cut off (a stop's deadline), a store fault or a bug: the request may have been
                # applied, so the items go out again.
                with anyio.CancelScope(shield=True):
                    now = self._clock()
                    try:
                        # Due once the request cut off can no longer land after the next one.
                        await self._store.release(
                            self.name,
                            sorted(unsettled),
                            now,
                            self.timing,
                            not_before=now + self.config.timeout,
                        )
                    except StateError:  # failing, or no longer ours: at start they recover
                        self._orphans.update(unsettled)
            self.in_flight -= len(items)
            self._slots.release()
            self.notify()

    async def _push(self, items: list[ItemValue], unsettled: set[str]) -> None:
        """One request for `items`, then settle them (or split a batch refused as a whole)."""
        await self._limiter.acquire()
        started = self._clock()
        if self._may_push is not None and not self._may_push():
            # No longer the leader (a lease lost, a pause past it): this request must not leave.
            keys = [i.key for i in items]
            await self._store.release(
                self.name, keys, started, self.timing, sent=False, not_before=started + 1.0
            )
            unsettled.difference_update(keys)
            return
        if self.health.paused_until > started:
            # The channel was paused while this batch waited for its turn: put it back, unsent.
            keys = [i.key for i in items]
            await self._store.release(
                self.name,
                keys,
                started,
                self.timing,
                sent=False,
                not_before=self.health.paused_until,
            )
            unsettled.difference_update(keys)
            return
        probe = self.health.down
        results: list[PushResult] | None = None
        failure: ChannelError | None = None
        try:
            with anyio.fail_after(self.config.timeout):
                results = await self._channel.push(items)
        except ChannelError as exc:
            failure = exc
        except TimeoutError:
            failure = _NoAnswer(f"{self.name}: no answer within {self.config.timeout:g}s")
        except Exception as exc:
            self._log.exception("channel.push_crashed")
            failure = ChannelRetryable(f"{self.name}: unexpected {type(exc).__name__}")
        now = self._clock()
        duration = now - started
        self._metrics.push_duration.labels(channel=self.name).observe(duration)
        if isinstance(failure, ChannelRejected) and len(items) > 1:
            # Refused for its content as a whole: one bad item must not hold its neighbours
            # back. Halves until the poison item stands alone and is rejected by itself.
            self._metrics.push_requests.labels(channel=self.name, outcome="rejected").inc()
            self._log.info("channel.batch_split", items=len(items), error=str(failure))
            middle = len(items) // 2
            await self._push(items[:middle], unsettled)
            await self._push(items[middle:], unsettled)
            return
        verdicts = self._verdicts(items, results, failure, now, probe=probe)
        outcome = self._request_outcome(verdicts, failure)
        self._metrics.push_requests.labels(channel=self.name, outcome=outcome).inc()
        settled = await self._store.settle(self.name, verdicts, now, self.timing, backoff_delay)
        unsettled.difference_update(v.key for v in verdicts)
        # One series look-up per batch, not per item (a labelled look-up costs more than the
        # observation itself).
        propagation = self._metrics.propagation.labels(channel=self.name)
        for changed_at in settled.propagated:
            propagation.observe(max(0.0, now - changed_at))
        await self._log_outcome(
            items, verdicts, failure, outcome, duration, attempts=settled.attempts
        )

    def _verdicts(
        self,
        items: list[ItemValue],
        results: list[PushResult] | None,
        failure: ChannelError | None,
        now: float,
        *,
        probe: bool,
    ) -> list[Verdict]:
        sent: dict[str, Value] = {item.key: item.value for item in items}
        if failure is not None:
            return self._fail(items, failure, now, probe=probe)
        assert results is not None
        self._healthy()
        by_key = {r.key: r for r in results if r.key in sent}
        verdicts = []
        for item in items:
            result = by_key.get(item.key)
            if result is None:
                verdicts.append(
                    Verdict(
                        item.key, item.value, Outcome.RETRY, "the channel did not answer for it"
                    )
                )
            else:
                reason = None if result.reason is None else scrub_text(result.reason)
                verdicts.append(
                    Verdict(item.key, item.value, result.outcome, reason, result.retry_after)
                )
        return verdicts

    def _fail(
        self, items: list[ItemValue], failure: ChannelError, now: float, *, probe: bool
    ) -> list[Verdict]:
        message = scrub_text(str(failure))  # channels may echo our credentials back
        self.health.last_error = message
        if isinstance(failure, ChannelRejected):
            return [Verdict(i.key, i.value, Outcome.REJECTED, message) for i in items]
        if isinstance(failure, ChannelFatal):
            # Requests already in flight when the channel went down fail too: only the first
            # failure and each failed probe lengthen the pause, not every straggler.
            if probe or not self.health.down:
                self.health.failures_in_a_row += 1
                exponent = min(self.health.failures_in_a_row - 1, 16)
                self._pause(now + min(PROBE_CAP, PROBE_BASE * 2**exponent), down=True)
            wait = max(0.0, self.health.paused_until - now)
            return [Verdict(i.key, i.value, Outcome.RETRY, message, wait) for i in items]
        if isinstance(failure, _NoAnswer):
            # The channel may still apply the request it did not answer: the next push of these
            # items waits as long again, so it does not land before the old one (no pause of
            # the channel: other items are not affected).
            wait = self.config.timeout
            return [Verdict(i.key, i.value, Outcome.RETRY, message, wait) for i in items]
        retry_after = failure.retry_after if isinstance(failure, ChannelRetryable) else None
        if retry_after is not None:
            # 429/503 with Retry-After is about the whole channel, not these items: pause it.
            self._pause(now + min(retry_after, MAX_RETRY_AFTER), down=False)
        return [Verdict(i.key, i.value, Outcome.RETRY, message, retry_after) for i in items]

    def _pause(self, until: float, *, down: bool) -> None:
        self.health.paused_until = max(self.health.paused_until, until)
        if down and not self.health.down:
            self.health.down = True
            self._metrics.channel_up.labels(channel=self.name).set(0)
            self._log.error("channel.paused", reason=self.health.last_error, until=until)

    def _healthy(self) -> None:
        self.health.failures_in_a_row = 0
        if self.health.down:
            self.health.down = False
            self._metrics.channel_up.labels(channel=self.name).set(1)
            self._log.info("channel.resumed")

    @staticmethod
    def _request_outcome(verdicts: list[Verdict], failure: ChannelError | None) -> str:
        if isinstance(failure, ChannelFatal):
            return "failed"
        outcomes = {v.outcome for v in verdicts}
        if Outcome.RETRY in outcomes:
            return "retry"
        if Outcome.REJECTED in outcomes:
            return "rejected"
        return "ok"

    async def _log_outcome(
        self,
        items: list[ItemValue],
        verdicts: list[Verdict],
        failure: ChannelError | None,
        outcome: str,
        duration: float,
        *,
        attempts: dict[str, int],
    ) -> None:
        duration_ms = round(duration * 1000, 1)
        self._tally.update(str(v.outcome) for v in verdicts)
        if outcome == "ok":
            self._log.debug(
                "channel.pushed",
                items=len(items),
                keys=[f"{i.key} {i.value.describe()}" for i in items[:10]],
                duration_ms=duration_ms,
            )
            return
        failed = [v for v in verdicts if v.outcome is not Outcome.ACKNOWLEDGED]
        skus = await self._store.skus(self.name, [v.key for v in failed])
        for verdict in failed:
            self._log.warning(
                "channel.push_rejected"
                if verdict.outcome is Outcome.REJECTED
                else "channel.push_retry",
                key=verdict.key,
                sku=",".join(skus.get(verdict.key, [])) or None,
                value=verdict.sent.describe(),
                status=getattr(failure, "status", None),
                attempt=attempts.get(verdict.key),
                error=verdict.error,
                duration_ms=duration_ms,
            )
