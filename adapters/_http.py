"""What every adapter does with HTTP the same way: status to error class, 2xx bodies, safe text.

The mapping from an HTTP status to what the dispatcher should do lives here and nowhere else:
408, 425, 429 and 5xx are retryable (429/503 with Retry-After pause the channel); 401 and 403 are
fatal for the channel; any other 4xx rejects the request's items.

A 2xx is not an acknowledgement by itself: APIs answer 200 with `{"success": false, "error":
...}`, GraphQL `errors`, a per-item failure. So an acknowledged `PushResult` is made here only,
by `confirm` (one item's request) and `acknowledged` (one item of a batch, given the part of the
body about it), and both look at the body first: a failure it reports is retryable, and a body
that is not the JSON the API documents is retryable too (nothing says the update was applied).
Adapters decide from their API's own per-item shapes what names an item invalid (rejected).
`tests/adapters/test_acknowledgement.py` keeps `Outcome.ACKNOWLEDGED` out of the adapters.

Bodies are read with a ceiling (`daemon.core.bodies`): a larger answer is retryable and says the
limit. Error texts quote the channel's answer, each configured secret masked (`daemon.core.redact`).
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
    "acknowledged",
    "confirm",
    "error_for_status",
    "get",
    "json_document",
    "json_number",
    "network_error",
    "probe_result",
    "reported_failure",
    "send",
    "short_text",
    "success_document",
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


#: `status` values with which a body reports a failure ("an error code and a message")
FAILED_STATUSES = frozenset({"error", "fail", "failed", "failure"})


def reported_failure(document: object) -> str | None:
    """What a JSON body reports as a failure despite its 2xx status, or None if it reports none.

    The shapes the channel APIs use: an `error` key (the Inventory Update API's `{"error":
    "..."}`), `success: false`, `status: "error"`, a non-empty `errors` (GraphQL, JSON:API,
    Marketplacer's mutation payloads). `"error": null` and `"errors": []` report nothing.
    """
    if not isinstance(document, dict):
        return None
    status = document.get("status")
    # Truthiness is "not null, false, 0, "", [] or {}" for parsed JSON, and cheap: this runs
    # once per item of every batch.
    if not (
        document.get("error")
        or document.get("success") is False
        or (isinstance(status, str) and status.lower() in FAILED_STATUSES)
        or document.get("errors")
    ):
        return None
    texts = [_text(document.get("error")), _text(document.get("message"))]
    errors = document.get("errors")
    texts.extend(_text(e) for e in (errors if isinstance(errors, list) else [errors]))
    said = "; ".join(t for t in texts if t)
    return short_text(said.encode()) if said else "the answer reports a failure"


def _text(part: object) -> str:
    """The human part of one error entry: a string, or an object's message, title or detail."""
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        for name in ("message", "title", "detail", "messages"):
            value = part.get(name)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, list) and value:
                return "; ".join(str(v) for v in value)
    return ""


def json_document(answer: Answer, *, channel: str, empty_ok: bool = False) -> object:
    """A 2xx body parsed as the JSON the API promises; anything else is retryable.

    `empty_ok` for APIs that document no success body (None then). A proxy's HTML page, a cut-off
    answer or an empty one where JSON is promised says nothing about the update: send it again.
    """
    if not answer.body.strip():
        if empty_ok:
            return None
        raise ChannelRetryable(
            f"{channel}: HTTP {answer.status} with an empty answer", status=answer.status
        )
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        detail = (
            f"{channel}: HTTP {answer.status} but the answer is not JSON: {short_text(answer.body)}"
        )
        raise ChannelRetryable(detail, status=answer.status) from exc


def success_document(
    answer: Answer,
    *,
    channel: str,
    empty_ok: bool = False,
    min_retry_after: float | None = None,
) -> object:
    """The body of an answer that says the request succeeded; any other answer raises.

    Not 2xx: the status's error class (`ChannelRejected` for a 4xx about the content). 2xx: the
    JSON the API documents, which must report no failure (`reported_failure`), else retryable:
    nothing in such a body names an item as invalid, and sending again costs little.
    """
    if not answer.ok:
        raise error_for_status(
            answer.status,
            answer.body,
            answer.headers,
            channel=channel,
            min_retry_after=min_retry_after,
        )
    document = json_document(answer, channel=channel, empty_ok=empty_ok)
    failure = reported_failure(document)
    if failure is not None:
        detail = f"{channel}: HTTP {answer.status} but the answer reports a failure: {failure}"
        raise ChannelRetryable(detail, status=answer.status)
    return document


def confirm(
    key: str,
    answer: Answer,
    *,
    channel: str,
    empty_ok: bool = False,
    already_done: frozenset[int] = frozenset(),
) -> PushResult:
    """The outcome of a one-item request, read from its status and its body.

    Acknowledged only for a 2xx whose body is a JSON object reporting no failure (or empty, with
    `empty_ok`), or for a status the API documents as "already applied" (`already_done`, Klump's
    409); a 4xx about the item rejects it; anything else raises its error class.
    """
    if answer.status in already_done:
        return PushResult(key, Outcome.ACKNOWLEDGED)
    try:
        document = success_document(answer, channel=channel, empty_ok=empty_ok)
    except ChannelRejected as exc:
        return PushResult(key, Outcome.REJECTED, reason=str(exc))
    if document is not None and not isinstance(document, dict):
        what = short_text(answer.body)
        detail = f"{channel}: HTTP {answer.status} but the answer is not a JSON object: {what}"
        raise ChannelRetryable(detail, status=answer.status)
    return PushResult(key, Outcome.ACKNOWLEDGED)


def acknowledged(key: str, evidence: object, *, channel: str) -> PushResult:
    """One item of a batch that the adapter read as applied, given the part of the body about it.

    Still retried if that part reports a failure after all (`reported_failure`): the adapter
    read its API's own per-item fields, this reads the shapes every API shares.
    """
    failure = reported_failure(evidence)
    if failure is not None:
        return PushResult(key, Outcome.RETRY, reason=f"{channel}: {failure}")
    return PushResult(key, Outcome.ACKNOWLEDGED)


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
