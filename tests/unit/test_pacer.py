"""The channel pacer holds its rate by schedule: late wake-ups are caught up, bursts are bounded."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest

from daemon.send.pacer import Pacer

pytestmark = pytest.mark.anyio


class FakeTime:
    """A clock that moves only when someone sleeps or works; sleeps overshoot like a real loop's."""

    def __init__(self, *, overshoot: float = 0.0, seed: int = 1) -> None:
        self.now = 1000.0
        self.overshoot = overshoot
        self._rng = random.Random(seed)

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        if delay > 0:
            self.now += delay + self._rng.uniform(0, self.overshoot)
        await anyio.lowlevel.checkpoint()


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0])


def busiest_second(times: list[float]) -> int:
    """The most grants in any half-open one-second window [t, t + 1)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_3000_requests_at_100_per_second_hold_the_rate_despite_late_wake_ups() -> None:
    # Every sleep wakes up to 2 ms late, as on a loaded event loop: a limiter that waits a full
    # interval after the previous request loses that time on every request (~0.91 of the rate).
    fake = FakeTime(overshoot=0.002)
    pacer = Pacer(100, clock=fake.clock, sleep=fake.sleep)
    granted = []
    for _ in range(3000):
        await pacer.acquire()
        granted.append(fake.now)
    assert rate(granted) >= 0.97 * 100
    assert busiest_second(granted) <= 1.05 * 100


async def test_busy_moments_are_caught_up_without_exceeding_the_rate() -> None:
    fake = FakeTime(overshoot=0.001)
    pacer = Pacer(100, clock=fake.clock, sleep=fake.sleep)
    granted = []
    for n in range(3000):
        await pacer.acquire()
        granted.append(fake.now)
        fake.now += 0.015 if n % 7 == 0 else 0.0  # now and then a batch takes 1.5 slots to build
    assert rate(granted) >= 0.97 * 100
    assert busiest_second(granted) <= 1.05 * 100


async def test_after_an_idle_spell_only_the_burst_goes_at_once() -> None:
    fake = FakeTime()
    pacer = Pacer(100, burst=3, clock=fake.clock, sleep=fake.sleep)
    for _ in range(50):
        await pacer.acquire()
    fake.now += 30.0  # idle: a leaky bucket of 30 s of credit would now allow 3,000 at once
    idle_end = fake.now
    granted = []
    for _ in range(200):
        await pacer.acquire()
        granted.append(fake.now)
    assert granted[:3] == [idle_end] * 3
    assert granted[3] == pytest.approx(idle_end + 0.01)
    assert busiest_second(granted) <= 100 + 3


async def test_concurrent_senders_share_one_schedule() -> None:
    fake = FakeTime()
    pacer = Pacer(50, burst=1, clock=fake.clock, sleep=fake.sleep)
    granted: list[float] = []

    async def sender() -> None:
        for _ in range(25):
            await pacer.acquire()
            granted.append(fake.now)

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(sender)
    assert len(granted) == 200
    assert busiest_second(granted) <= 50 + 1
    assert fake.now - granted[0] >= 199 / 50 * 0.99  # one schedule, not one per sender


async def test_waiters_woken_late_by_a_stalled_loop_do_not_all_go_at_once() -> None:
    fake = FakeTime()
    pacer = Pacer(100, burst=2, clock=fake.clock, sleep=fake.sleep)
    granted: list[float] = []

    async def sender() -> None:
        await pacer.acquire()
        granted.append(fake.now)

    await pacer.acquire()
    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(sender)
        await anyio.lowlevel.checkpoint()
        fake.now += 0.5  # the loop stalls with 20 senders waiting
    assert busiest_second(granted) <= 100 + 2
    assert sum(1 for t in granted if t == granted[0]) <= 2


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    pacer = Pacer(10, burst=1)  # real time: one slot per 100 ms
    await pacer.acquire()
    with anyio.move_on_after(0.01):
        await pacer.acquire()  # waits for the slot 100 ms on, then gives up
    started = anyio.current_time()
    await pacer.acquire()  # takes the slot the cancelled waiter left, not the one after it
    assert anyio.current_time() - started < 0.15


@pytest.mark.parametrize(("rate_per_second", "burst"), [(0, 2), (-1, 2), (10, 0)])
def test_nonsense_settings_are_refused(rate_per_second: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Pacer(rate_per_second, burst)
