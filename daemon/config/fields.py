"""The value types settings tables are built from, and how a failed validation reads.

A duration or a rate is written with its unit (`30s`, `5/s`) and stored as seconds or events per
second. Every table is a `Settings`: frozen, and an unknown key is a fault, never ignored. A
pydantic error becomes a `(key, problem)` pair such as `('channel "klump".timeout', "must be at
most 1h")`, the shape `ConfigError` carries and `check-config` prints.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from daemon.core.units import parse_duration, parse_rate

__all__ = [
    "MAX_TIMEOUT",
    "NAME",
    "BaseUrl",
    "Duration",
    "DurationOrOff",
    "DurationOrZero",
    "Rate",
    "Settings",
    "Timeout",
    "key_text",
    "one_line",
    "validation_faults",
]

MAX_TIMEOUT = 3600.0
#: what a channel's `name` may be: it becomes a metric label and a log field
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def _base_url(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _timeout(seconds: float) -> float:
    if seconds > MAX_TIMEOUT:
        raise ValueError("must be at most 1h")
    return seconds


#: Seconds, written with a unit; must be above zero.
Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
#: Seconds for one request or a drain: above zero, at most an hour.
Timeout = Annotated[
    float, BeforeValidator(parse_duration), AfterValidator(_positive), AfterValidator(_timeout)
]
#: Seconds, written with a unit; zero allowed.
DurationOrZero = Annotated[float, BeforeValidator(parse_duration)]


def _off_or_duration(value: object) -> float:
    """A bare `"0"` says "off" as plainly as `"0s"`; any other number still needs its unit."""
    if isinstance(value, str) and value.strip() == "0":
        return 0.0
    return parse_duration(value)


#: Seconds, written with a unit; `"0"` (or `"0s"`) turns the thing off.
DurationOrOff = Annotated[float, BeforeValidator(_off_or_duration)]
#: Events per second, written "N/s" or "N/m".
Rate = Annotated[float, BeforeValidator(parse_rate)]
BaseUrl = Annotated[str, BeforeValidator(_base_url)]


class Settings(BaseModel):
    """Base of every settings table: immutable, and unknown keys are faults, not silence."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def key_text(loc: tuple[int | str, ...]) -> str:
    """A key's place as the file writes it: `channel "klump".rate_limit`, `channel[1].name`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


def validation_faults(exc: ValidationError, prefix: tuple[int | str, ...]) -> list[tuple[str, str]]:
    """Every error of one validation as `(key, problem)`, its keys under `prefix`."""
    out = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        out.append((key_text(prefix + loc) or "config", message))
    return out


def one_line(text: str, limit: int = 300) -> str:
    """A fault's text as one line of sane length, whatever the file held."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."
