from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from daemon.core.retry_after import MAX_RETRY_AFTER, parse_retry_after


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("86400", MAX_RETRY_AFTER),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_delta_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_http_dates_count_from_now() -> None:
    now = 1_700_000_000.0
    later = format_datetime(datetime.fromtimestamp(now + 42, UTC), usegmt=True)
    assert parse_retry_after(later, now=now) == 42
    earlier = format_datetime(datetime.fromtimestamp(now - 42, UTC), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0
