"""Acknowledgement is decided in one place: `adapters/_http.py`, which reads the body first.

An adapter that wrote `PushResult(key, Outcome.ACKNOWLEDGED)` after looking at the status alone
lost every update a channel answered `200 {"success": false, ...}`; the walk below keeps any
adapter from acknowledging except through `confirm` / `acknowledged`, and the cases after it pin
what those helpers read as a failure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from adapters._http import Answer, acknowledged, confirm, reported_failure, success_document
from daemon.core.errors import ChannelRejected, ChannelRetryable
from daemon.core.models import Outcome

ADAPTERS_DIR = Path(__file__).resolve().parents[2] / "adapters"


def test_only_the_http_helpers_make_an_acknowledged_outcome() -> None:
    offenders = []
    for path in sorted(ADAPTERS_DIR.glob("*.py")):
        if path.name == "_http.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "ACKNOWLEDGED":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == [], "acknowledge through adapters._http.confirm / acknowledged"


@pytest.mark.parametrize(
    "body",
    [
        {"success": False, "error": "database is locked"},
        {"error": "Missing required field: sku"},
        {"error": {"code": 5, "message": "busy"}},
        {"success": False},
        {"status": "error", "message": "try later"},
        {"status": "FAILED"},
        {"errors": [{"message": "Internal error", "path": ["i0"]}]},
        {"data": None, "errors": [{"status": "500", "title": "locked"}]},
        {"errors": {"quantity": ["is invalid"]}},
    ],
)
def test_a_body_reporting_a_failure_is_seen(body: dict[str, object]) -> None:
    assert reported_failure(body)
    assert acknowledged("k", body, channel="c").outcome is Outcome.RETRY


@pytest.mark.parametrize(
    "body",
    [
        {"success": True},
        {"error": None, "errors": []},
        {"id": "bb34", "name": "iPhone 15", "quantity": 5, "status": "active"},
        {"results": [{"product_id": "P-1", "status": 200}]},
        {"data": [{"id": 1, "type": "inventories"}]},
        [{"results": []}],
        None,
    ],
)
def test_a_body_reporting_no_failure_passes(body: object) -> None:
    assert reported_failure(body) is None
    assert acknowledged("k", body, channel="c").outcome is Outcome.ACKNOWLEDGED


def answer(status: int, body: bytes) -> Answer:
    return Answer(status, body, {})


def test_the_failure_is_quoted_cut_short_and_retried_without_a_pause() -> None:
    with pytest.raises(ChannelRetryable, match="database is locked") as caught:
        success_document(
            answer(200, b'{"success": false, "error": "database is locked"}'), channel="c"
        )
    assert caught.value.status == 200
    assert caught.value.retry_after is None  # about this request, not a pause of the channel
    long = b'{"error": "' + b"x" * 5000 + b'"}'
    with pytest.raises(ChannelRetryable) as caught:
        success_document(answer(200, long), channel="c")
    assert len(str(caught.value)) < 400


def test_confirm_reads_status_then_body() -> None:
    assert confirm("k", answer(200, b'{"ok": 1}'), channel="c").outcome is Outcome.ACKNOWLEDGED
    assert confirm("k", answer(204, b""), channel="c", empty_ok=True).outcome is (
        Outcome.ACKNOWLEDGED
    )
    done = confirm("k", answer(409, b'{"error": "x"}'), channel="c", already_done=frozenset({409}))
    assert done.outcome is Outcome.ACKNOWLEDGED
    assert confirm("k", answer(404, b'{"error": "no"}'), channel="c").outcome is Outcome.REJECTED
    for status, body in ((200, b""), (200, b"[1]"), (200, b"<html>"), (201, b'{"error": "x"}')):
        with pytest.raises(ChannelRetryable):
            confirm("k", answer(status, body), channel="c")
    with pytest.raises(ChannelRejected):
        success_document(answer(422, b"{}"), channel="c")
