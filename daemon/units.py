"""Durations (`"500ms"`, `"2s"`, `"5m"`, `"6h"`) and rates (`"5/s"`, `"600/m"`) from the config."""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_rate"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")


def parse_duration(text: object) -> float:
    """Seconds in a duration string. Bare numbers are refused: a unit-less `5` is a bug waiting."""
    if not isinstance(text, str):
        raise ValueError('must be a string with a unit, e.g. "500ms", "2s", "5m", "6h"')
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f'{text!r} is not a duration; write e.g. "500ms", "2s", "5m", "6h"')
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_rate(text: object) -> float:
    """Events per second in a rate string; must be above zero."""
    if not isinstance(text, str):
        raise ValueError('must be a rate string such as "5/s" or "600/m"')
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f'{text!r} is not a rate; write e.g. "5/s" or "600/m"')
    per_second = float(match.group(1)) / _UNIT_SECONDS[match.group(2)]
    if per_second <= 0:
        raise ValueError("must be above zero")
    return per_second
