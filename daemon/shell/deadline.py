"""A store write that an HTTP request waits for only so long: the webhook's answer in 5 s.

The write runs in the process's lifetime task group, beside the request, and the request
waits for it at most `seconds`: a state file locked by another program, or a PostgreSQL server
that is restarting (the pool waits up to 10 s for a connection), costs the sender a prompt 503
rather than a timeout or a 500. A write that lands after the 503 only queues SKUs the sender
will send again. SQLite and PostgreSQL take the same path, so the promise is the same on both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from anyio.abc import TaskGroup

from daemon.core.errors import StoreUnavailable

__all__ = ["commit_within"]

T = TypeVar("T")


async def commit_within(
    group: TaskGroup | None, seconds: float, write: Callable[[], Awaitable[T]]
) -> T:
    """`write()`'s result if it finishes within `seconds`; `StoreUnavailable` if it fails with
    it, does not finish in time, or there is no task group to run it in (not started, or
    stopping). Any other error is the request's (a 500 for it), never the process's."""
    if group is None:
        raise StoreUnavailable("the state store is not open yet", operation="write")
    done = anyio.Event()
    outcome: list[T] = []
    failure: list[Exception] = []

    async def run() -> None:
        try:
            outcome.append(await write())
        except Exception as exc:
            failure.append(exc)
        finally:
            done.set()

    group.start_soon(run)
    with anyio.move_on_after(seconds):
        await done.wait()
    if failure:
        raise failure[0]
    if not outcome:
        raise StoreUnavailable(
            f"the state store did not answer within {seconds:g} s", operation="write"
        )
    return outcome[0]
