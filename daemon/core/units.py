"""Durations (`"500ms"`, `"2s"`, `"5m"`, `"6h"`) and rates (`"5/s"`, `"600/m"`) from the config."""

from __future__ import annotations

import math
import re

__all__ = ["MAX_DURATION", "MAX_RATE", "MIN_RATE", "parse_duration", "parse_rate"]

#: Ten years: longer is a typo (or `inf` in disguise), and timers overflow near it.
MAX_DURATION = 3650 * 86400.0
#: Requests per second: no API we talk to takes more; fewer than one an hour is a typo.
MAX_RATE = 100_000.0
MIN_RATE = 1 / 3600

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$", re.ASCII)


def parse_duration(text: object) -> float:
    """Seconds in a duration string. Bare numbers are refused: a unit-less `5` is a bug waiting."""
    if not isinstance(text, str):
        raise ValueError('must be a string with a unit, e.g. "500ms", "2s", "5m", "6h"')
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f'{_short(text)} is not a duration; write e.g. "500ms", "2s", "5m", "6h"')
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"{_short(text)} is too long; at most 3650d")
    return seconds


def parse_rate(text: object) -> float:
    """Events per second in a rate string; must be above zero."""
    if not isinstance(text, str):
        raise ValueError('must be a rate string such as "5/s" or "600/m"')
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f'{_short(text)} is not a rate; write e.g. "5/s" or "600/m"')
    per_second = float(match.group(1)) / _UNIT_SECONDS[match.group(2)]
    if per_second <= 0:
        raise ValueError("must be above zero")
    if not math.isfinite(per_second) or per_second > MAX_RATE:
        raise ValueError(f"{_short(text)} is too fast; at most {MAX_RATE:g}/s")
    if per_second < MIN_RATE:
        raise ValueError(f"{_short(text)} is too slow; at least 1/h")
    return per_second


def _short(text: str) -> str:
    """The value for an error message, cut so a pasted novel stays one readable line."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."
