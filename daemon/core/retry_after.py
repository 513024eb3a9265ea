"""Retry-After, as keyCRM and every channel send it: delta-seconds or an HTTP date."""

from __future__ import annotations

import email.utils
import math
import time

__all__ = ["MAX_RETRY_AFTER", "parse_retry_after"]

#: A server asking for more than this is capped: we would rather probe again than stall for hours.
MAX_RETRY_AFTER = 600.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait, clamped to [0, MAX_RETRY_AFTER], or None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
