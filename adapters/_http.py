"""What every adapter does with HTTP the same way: status to error class, Retry-After, safe text.

The mapping from an HTTP status to what the dispatcher should do lives here and nowhere else:
2xx is the adapter's to read; 408, 425, 429 and 5xx are retryable (429/503 with Retry-After pause
the channel); 401 and 403 are fatal for the channel; any other 4xx rejects the request's items.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import aiohttp

from daemon.errors import ChannelFatal, ChannelRejected, ChannelRetryable
from daemon.retry_after import parse_retry_after

__all__ = [
    "NETWORK_ERRORS",
    "error_for_status",
    "json_number",
    "network_error",
    "short_text",
]


def json_number(value: Decimal) -> int | float:
    """A price as a JSON number: an integer when whole, else a float (APIs reject strings)."""
    return int(value) if value == value.to_integral_value() else float(value)


def short_text(body: bytes, limit: int = 200) -> str:
    """The start of a response body, printable, for an error message (never our request)."""
    text = body.decode("utf-8", errors="replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def error_for_status(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    channel: str,
    min_retry_after: float | None = None,
) -> ChannelRetryable | ChannelRejected | ChannelFatal:
    """The error a non-2xx answer stands for. `min_retry_after` covers APIs that say 'wait 60 s'."""
    detail = f"{channel}: HTTP {status} {short_text(body)}".rstrip()
    if status in (408, 425, 429) or status >= 500:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        if status in (429, 503) and min_retry_after is not None:
            retry_after = retry_after if retry_after is not None else min_retry_after
        return ChannelRetryable(detail, status=status, retry_after=retry_after)
    if status in (401, 403):
        return ChannelFatal(detail, status=status)
    return ChannelRejected(detail, status=status)


def network_error(exc: BaseException, *, channel: str) -> ChannelRetryable:
    """A request that got no answer: always retryable."""
    kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
    return ChannelRetryable(f"{channel}: no answer ({kind})")


NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError)
