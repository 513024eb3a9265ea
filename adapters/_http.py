"""What every adapter does with HTTP the same way: status to error class, Retry-After, safe text.

The mapping from an HTTP status to what the dispatcher should do lives here and nowhere else:
2xx is the adapter's to read; 408, 425, 429 and 5xx are retryable (429/503 with Retry-After pause
the channel); 401 and 403 are fatal for the channel; any other 4xx rejects the request's items.
Bodies are read with a ceiling (`daemon.bodies`): a larger answer is retryable and says the limit.
Error texts quote the channel's answer scrubbed of every configured secret (`daemon.redact`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
import orjson

from daemon.contract import (
    MAX_BODY_BYTES,
    BodyTooLarge,
    ChannelFatal,
    ChannelRejected,
    ChannelRetryable,
    Outcome,
    Probe,
    PushResult,
    describe_network_error,
    parse_retry_after,
    read_body,
    scrub_text,
)

__all__ = [
    "NETWORK_ERRORS",
    "Answer",
    "error_for_status",
    "get",
    "item_result",
    "json_number",
    "network_error",
    "probe_result",
    "send",
    "short_text",
]


def json_number(value: Decimal) -> int | float:
    """A price as a JSON number: an integer when whole, else a float (APIs reject strings)."""
    return int(value) if value == value.to_integral_value() else float(value)


def short_text(body: bytes, limit: int = 200) -> str:
    """The start of a response body, printable, for an error message (never our request).

    Scrubbed before it is cut, so a credential the channel echoed is not left half-masked.
    """
    text = scrub_text(body.decode("utf-8", errors="replace").strip().replace("\n", " "))
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
    """A request that got no answer: always retryable; the message names the host and the cause."""
    return ChannelRetryable(f"{channel}: no answer: {describe_network_error(exc)}")


NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Answer:
    """A channel's whole answer, read before the connection goes back to the pool."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    channel: str,
    payload: object,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 -- aiohttp's per-request timeout, not ours
) -> Answer:
    """One request with a JSON body; no answer at all becomes `ChannelRetryable`."""
    return await _request(
        session,
        method,
        url,
        orjson.dumps(payload),
        channel=channel,
        headers=headers,
        timeout=timeout,
    )


async def get(
    session: aiohttp.ClientSession,
    url: str,
    *,
    channel: str,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 -- aiohttp's per-request timeout, not ours
) -> Answer:
    """One GET without a body (read-back); no answer at all becomes `ChannelRetryable`."""
    return await _request(
        session, "GET", url, None, channel=channel, headers=headers, timeout=timeout
    )


async def _request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    data: bytes | None,
    *,
    channel: str,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 -- aiohttp's per-request timeout, not ours
) -> Answer:
    """The whole answer, read with a ceiling: too large a one is `ChannelRetryable` too."""
    try:
        async with session.request(
            method, url, data=data, headers=dict(headers), timeout=timeout
        ) as response:
            return Answer(
                response.status, await read_body(response, MAX_BODY_BYTES), response.headers
            )
    except BodyTooLarge as exc:
        raise ChannelRetryable(f"{channel}: {exc}") from exc
    except NETWORK_ERRORS as exc:
        raise network_error(exc, channel=channel) from exc


def item_result(key: str, answer: Answer, *, channel: str) -> PushResult:
    """The outcome of a one-item request: 2xx acknowledged, a 4xx about it rejected, else raise."""
    if answer.ok:
        return PushResult(key, Outcome.ACKNOWLEDGED)
    error = error_for_status(answer.status, answer.body, answer.headers, channel=channel)
    if isinstance(error, ChannelRejected):
        return PushResult(key, Outcome.REJECTED, reason=str(error))
    raise error


#: What a deliberately incomplete probe request earns once the channel has accepted our
#: credentials: it validated the body and refused it, so nothing changed.
PROBE_ACCEPTED = frozenset({400, 409, 422})


def probe_result(answer: Answer, *, accepted: frozenset[int] = PROBE_ACCEPTED) -> Probe:
    """What the answer to a harmless authenticated request says about address and credentials."""
    status = answer.status
    if answer.ok or status in accepted:
        return Probe(True, "reachable", f"HTTP {status}, credentials accepted")
    if status in (401, 403):
        return Probe(False, "auth refused", f"HTTP {status} {short_text(answer.body, 120)}".strip())
    if status in (404, 405, 410):
        return Probe(False, "not found", f"HTTP {status}: check base_url")
    if status == 429:
        return Probe(True, "reachable", "HTTP 429: rate limited, credentials not checked")
    return Probe(
        False, "unexpected answer", f"HTTP {status} {short_text(answer.body, 120)}".strip()
    )
