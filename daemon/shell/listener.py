"""The one HTTP listener, for the life of the process; hostile clients cost it little.

A reload that changes `daemon.listen` binds the new address first and only then lets go of the
old one, so a port that is taken (or a host that does not resolve) fails the reload, not the
daemon, which keeps serving where it was.

aiohttp serves the app; this module owns what aiohttp leaves open when facing the internet:

- *Slow clients.* aiohttp waits for a request head forever and keeps an idle connection an hour.
  A new connection must send its whole request head within `header_timeout`; an idle keep-alive
  connection is closed after `keepalive_timeout` (aiohttp closes one whose next head trickles
  in too, at the same deadline).
- *Malformed requests.* aiohttp's parser errors quote the request line, and the webhook's path
  carries its secret token. aiohttp's server logger is replaced by one that writes a single
  `http.bad_request` line with the parser's reason only (scrubbed, first line, no traceback),
  and the 400 answer says that reason without quoting the request back either.
  A body that breaks while a route reads it (not the gzip or deflate it says, broken chunks) is a
  400 too, and a client that leaves mid-request one `http.client_gone` debug line, for any route
  (`daemon/shell/request_body.py` says why). Real bugs in a route are still logged with their
  traceback, scrubbed.
- *File descriptor exhaustion.* When `accept()` fails with EMFILE/ENFILE, asyncio logs a
  traceback every second per socket. One `http.fd_exhausted` error a minute says it instead,
  with how many were suppressed; connections are accepted again once descriptors free up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from asyncio.constants import ACCEPT_RETRY_DELAY
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from daemon.core.redact import scrub_text
from daemon.shell.request_body import reason

__all__ = [
    "FD_LOG_EVERY",
    "HEADER_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "Listener",
    "parse_listen",
    "split_listen",
]

log = structlog.get_logger("stocksync.http")

HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 75.0
FD_LOG_EVERY = 60.0
_FD_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9108` for IPv6) as a host and a port; a ValueError if it is not one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not host:port (e.g. 127.0.0.1:9108 or [::1]:9108)")
    return host.removeprefix("[").removesuffix("]"), int(port)


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) into its parts (the config has checked its form)."""
    return parse_listen(listen)


class _ServerLog(logging.Logger):
    """aiohttp's server logger, replaced: one scrubbed structlog line per event, like ours."""

    def __init__(self) -> None:
        super().__init__("stocksync.http.server", logging.DEBUG)

    def handle(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # aiohttp says debug for non-HTTP noise on a fresh connection (scanners, TLS).
            emit = log.debug if record.levelno < logging.WARNING else log.info
            emit("http.bad_request", status=exc.code or 400, problem=reason(exc))
            return
        if record.levelno < logging.WARNING:
            return
        log.error(
            "http.server_error",
            problem=scrub_text(record.getMessage()),
            exc_info=record.exc_info or False,
        )


class _Handler(web.RequestHandler):
    """aiohttp's per-connection protocol, answering a malformed request without quoting it.

    A body that breaks while a route reads it (not decodable, broken chunks) is the client's
    fault whichever route reads it: 400 with its reason, one debug line. So is a client that
    leaves mid-request: one debug line. Routes read bodies through `read_request_body` and
    answer these themselves; this is for any that does not, and for aiohttp's own last read
    of a broken body after the route answered.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            message = reason(exc)
        elif isinstance(exc, RequestPayloadError):
            status, message = 400, reason(exc.__cause__)
        return super().handle_error(request, status, exc, message)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError):
            log.debug("http.bad_request", status=400, problem=reason(exc.__cause__))
        elif isinstance(exc, ConnectionError) and self.transport is None:
            log.debug("http.client_gone", problem="closed before the request ended")
        else:
            super().log_exception(*args, **kw)


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, closed if its first request head is too slow."""

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            window = self._tail + data
            if b"\r\n\r\n" in window:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = window[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _expire(self) -> None:
        self._timer = None
        log.debug("http.slow_client_closed", timeout=self._timeout)
        if self._transport is not None:
            self._transport.close()


class _FdExhaustion:
    """A loop exception handler that turns accept()'s EMFILE storm into one line a minute."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._last: float | None = None
        #: when accept() last failed: asyncio retries it `ACCEPT_RETRY_DELAY` later
        self.last_failed: float | None = None
        self._suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if _stale_accept_retry(context):
            # The socket closed (a stop, a rebind) while asyncio waited to retry its accept():
            # the retry finds no socket. Nothing is lost: the socket is gone on purpose.
            log.debug("http.accept_retry_after_close")
            return
        if not (isinstance(exc, OSError) and exc.errno in _FD_ERRNOS):
            loop.default_exception_handler(context)
            return
        now = self._clock()
        self.last_failed = now
        if self._last is not None and now - self._last < self._every:
            self._suppressed += 1
            return
        log.error(
            "http.fd_exhausted",
            problem=exc.strerror or str(exc),
            suppressed=self._suppressed,
            hint="raise the open-files limit (LimitNOFILE=, ulimit -n); connections wait meanwhile",
        )
        self._last = now
        self._suppressed = 0


def _stale_accept_retry(context: dict[str, Any]) -> bool:
    """Whether `context` is asyncio's delayed accept() retry failing on a socket since closed."""
    exc = context.get("exception")
    callback = getattr(context.get("handle"), "_callback", None)
    return getattr(callback, "__name__", "") == "_start_serving" and (
        isinstance(exc, ValueError) or (isinstance(exc, OSError) and exc.errno == errno.EBADF)
    )


class Listener:
    """Serves one aiohttp app on one address at a time: `start(listen)`, `rebind()`, `close()`.

    Binding raises `OSError` (port in use, unknown host) with the old address still served.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float = HEADER_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        fd_log_every: float = FD_LOG_EVERY,
    ) -> None:
        self._header_timeout = header_timeout
        # What every connection's handler is built with (aiohttp's Server would pass the same).
        self._handler_options: dict[str, Any] = {
            "access_log": None,
            "logger": _ServerLog(),
            "keepalive_timeout": keepalive_timeout,
        }
        self._runner = web.AppRunner(app, handle_signals=False, **self._handler_options)
        self._server: asyncio.Server | None = None
        self._fd_handler = _FdExhaustion(fd_log_every)
        self._previous_handler: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listen: str | None = None
        self.port: int | None = None

    async def start(self, listen: str) -> int:
        """Set the app up and serve on `listen`; the bound port (useful with port 0)."""
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._fd_handler)
        return await self.rebind(listen)

    async def rebind(self, listen: str) -> int:
        """Serve on `listen`; raises OSError (and keeps the old address) if it cannot bind."""
        if listen == self.listen and self.port is not None:
            return self.port
        server = self._runner.server
        assert server is not None, "start() first"
        host, port = parse_listen(listen)
        loop = asyncio.get_running_loop()
        options, timeout = self._handler_options, self._header_timeout

        def connection() -> asyncio.Protocol:
            return _Guarded(_Handler(server, loop=loop, **options), timeout)

        try:
            bound = await loop.create_server(connection, host, port, reuse_address=True)
        except ValueError as exc:  # UnicodeError: a host label over 63 characters
            raise OSError(errno.EINVAL, f"{host[:60]!r} is not a valid host name") from exc
        old, self._server = self._server, bound
        self.port = int(bound.sockets[0].getsockname()[1])
        self.listen = listen
        if old is not None:
            old.close()  # no new connections there; those under way finish
        log.info("http.listening", listen=listen, port=self.port)
        return self.port

    async def close(self) -> None:
        """Stop accepting, let requests under way finish (aiohttp's shutdown), close the rest."""
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        failed = self._fd_handler.last_failed
        if failed is not None:
            # asyncio retries a failed accept() later, on the socket it had; that retry must
            # still meet our handler (it fails quietly), not the one we restore below.
            pending = failed + ACCEPT_RETRY_DELAY + 0.05 - time.monotonic()
            if pending > 0:
                await asyncio.sleep(pending)
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous_handler)
            self._loop = None
