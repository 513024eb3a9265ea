"""Reading a client's request body: bounded in size and time, and every way it fails named.

aiohttp decodes `Content-Encoding` (gzip and deflate; br and zstd only with their optional
libraries) and de-chunks the body as a route reads it. When that fails it raises its own
exceptions: `RequestPayloadError` (wrapping the parser's error) for a body that does not decode
or a chunked framing that breaks mid-body, `ConnectionResetError` when the client goes away
before the body ends. A route that does not expect them answers 500 and logs a traceback for
what is the client's doing, so every body is read through `read_request_body`, which turns them
into `BodyRefused` (answer the client 400 or 408, change nothing) or `ClientGone` (one debug
line; nobody is left to answer). The listener (`daemon/shell/listener.py`) applies the same
classification to any route that would let such an error through, with `reason`.

No message quotes the request: the parser's own texts quote its bytes, and the webhook's path
carries a secret.
"""

from __future__ import annotations

import asyncio

import anyio
import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

__all__ = [
    "CLIENT_GONE_STATUS",
    "DECODED_ENCODINGS",
    "BodyRefused",
    "ClientGone",
    "read_request_body",
    "reason",
]

log = structlog.get_logger("stocksync.http")

#: the Content-Encodings aiohttp decodes (br and zstd only with their optional libraries)
DECODED_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})
#: the status a route records for a request whose client left (nginx's "client closed
#: request"): only the access log sees it, there is nobody to send it to
CLIENT_GONE_STATUS = 499

#: what a parser error means, by its class: never the parser's own message, which quotes the
#: request bytes (a cut through the webhook token would defeat any masking)
_REASONS = {
    "LineTooLong": "request line or header too long",
    "BadStatusLine": "malformed request line",
    "InvalidURLError": "malformed request target",
    "InvalidHeader": "malformed header",
    "ContentEncodingError": "body does not decode as its Content-Encoding says, or that "
    "encoding is not supported",
    "ContentLengthError": "body shorter than its Content-Length",
    "TransferEncodingError": "malformed chunked body",
    "BadHttpMessage": "malformed request",
}


def reason(exc: BaseException | None) -> str:
    """What was wrong with a request, in words of ours: no byte of the request is quoted."""
    for kind in type(exc).__mro__:
        if kind.__name__ in _REASONS:
            return _REASONS[kind.__name__]
    return "malformed request"


class BodyRefused(Exception):
    """The client sent a body we cannot take: answer `status` with `message`, change nothing."""

    def __init__(self, status: int, problem: str, message: str | None = None) -> None:
        super().__init__(problem)
        self.status = status
        #: for the log line
        self.problem = problem
        #: for the client
        self.message = message if message is not None else problem


class ClientGone(Exception):
    """The client closed the connection before its body ended: logged, nothing to answer."""


def _undecodable(request: web.BaseRequest, exc: RequestPayloadError) -> str:
    cause = exc.__cause__
    if isinstance(cause, ContentEncodingError):
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding in DECODED_ENCODINGS:  # aiohttp decodes only these: the header said one
            return f"body is not valid {encoding} (Content-Encoding: {encoding})"
    return reason(cause) if cause is not None else "malformed request body"


def _route(request: web.BaseRequest) -> str:
    """The route's pattern, never the path as it came (it may carry a token)."""
    resource = request.match_info.route.resource if isinstance(request, web.Request) else None
    return resource.canonical if resource is not None else "(unmatched)"


async def read_request_body(request: web.BaseRequest, *, within: float) -> bytes:
    """The whole body, decoded; at most the app's `client_max_size` once decoded.

    Raises `BodyRefused` (400: too large, not decodable, broken framing; 408: not sent within
    `within` seconds) or `ClientGone`; a cancellation (the listener closing, or aiohttp
    cancelling the handler of a closed connection) is logged as the latter and re-raised.
    """
    try:
        with anyio.fail_after(within):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyRefused(400, "body too large") from None
    except TimeoutError:
        raise BodyRefused(408, "body too slow", f"body not sent within {within:g}s") from None
    except RequestPayloadError as exc:
        raise BodyRefused(400, _undecodable(request, exc)) from None
    except ConnectionError:  # ConnectionResetError, aiohttp's ClientConnectionResetError
        log.debug("http.client_gone", route=_route(request), problem="closed before the body ended")
        raise ClientGone from None
    except asyncio.CancelledError:
        log.debug("http.client_gone", route=_route(request), problem="cancelled while reading")
        raise
