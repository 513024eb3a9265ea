"""Scripted misbehaviour shared by every fake: the next N requests answer with a fault.

Two kinds: a transport fault (`add`: a status, a body, Retry-After, a delay), the same for every
fake; and a failure reported inside a 200 (`fail_in_body`), which each fake words as its API
does (`{"success": false, "error": ...}`, GraphQL `errors`, a per-item status), applying nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import anyio
from aiohttp import web

__all__ = ["Fault", "Faults"]


@dataclass(slots=True)
class Fault:
    """One scripted answer. `status=0` with `body` set sends a 200 with that (malformed) body.

    `headers` go out as given: `Content-Encoding: gzip` with a gzipped body makes a gzip bomb.
    """

    status: int
    body: bytes = b""
    retry_after: str | None = None
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


class Faults:
    """A queue of faults consumed one per request, plus an optional fixed delay for every answer."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()
        self._in_body: deque[str] = deque()
        self.delay = 0.0
        self.gate: anyio.Event | None = None

    def add(
        self,
        status: int,
        *,
        times: int = 1,
        body: bytes = b"",
        retry_after: str | None = None,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        extra = tuple((headers or {}).items())
        for _ in range(times):
            self._queue.append(Fault(status, body, retry_after, delay, extra))

    def fail_in_body(self, message: str, *, times: int = 1) -> None:
        """The next `times` updates answer 200 with a body that reports `message` as the failure,
        in the fake's API's own words, and change nothing (a locked database behind the API)."""
        self._in_body.extend([message] * times)

    def body_failure(self) -> str | None:
        """The message this update must fail with inside a 200, or None to apply it."""
        return self._in_body.popleft() if self._in_body else None

    def clear(self) -> None:
        self._queue.clear()
        self._in_body.clear()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def answer(self) -> web.Response | None:
        """The scripted response for this request, or None to answer normally."""
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await anyio.sleep(self.delay)
        if not self._queue:
            return None
        fault = self._queue.popleft()
        if fault.delay:
            await anyio.sleep(fault.delay)
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        headers.update(fault.headers)
        if fault.status == 0:
            return web.Response(body=fault.body, headers=headers, content_type="application/json")
        body = fault.body or b'{"message": "simulated failure"}'
        return web.Response(
            status=fault.status, body=body, headers=headers, content_type="application/json"
        )
