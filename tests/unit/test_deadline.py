"""The webhook's store write, waited for only so long (`daemon.shell.deadline`): both stores."""

from __future__ import annotations

import time

import anyio
import pytest

from daemon.core.errors import StoreUnavailable
from daemon.shell.deadline import commit_within

pytestmark = pytest.mark.anyio


async def test_a_write_that_finishes_in_time_gives_its_result() -> None:
    async def write() -> int:
        return 3

    async with anyio.create_task_group() as tg:
        assert await commit_within(tg, 1.0, write) == 3


async def test_a_write_that_hangs_is_store_unavailable_at_the_deadline_and_goes_on() -> None:
    landed = anyio.Event()

    async def write() -> int:
        await anyio.sleep(0.3)
        landed.set()
        return 1

    async with anyio.create_task_group() as tg:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="within 0.1 s"):
            await commit_within(tg, 0.1, write)
        assert time.monotonic() - started < 0.25
        with anyio.fail_after(2):
            await landed.wait()  # not cancelled: its SKUs are queued for the resend anyway


async def test_a_failed_write_raises_its_own_error_to_the_request_not_the_task_group() -> None:
    async def unavailable() -> int:
        raise StoreUnavailable("disk full", operation="write")

    async def bug() -> int:
        raise KeyError("bug")

    async with anyio.create_task_group() as tg:
        with pytest.raises(StoreUnavailable, match="disk full"):
            await commit_within(tg, 1.0, unavailable)
        with pytest.raises(KeyError):
            await commit_within(tg, 1.0, bug)


async def test_without_a_task_group_nothing_is_written() -> None:
    async def write() -> int:
        raise AssertionError("must not run")

    with pytest.raises(StoreUnavailable, match="not open yet"):
        await commit_within(None, 1.0, write)
