"""structlog set-up: one JSON object a line on stderr, or a console renderer for a terminal.

Every line has `event`, `level` and an ISO 8601 UTC `timestamp`. Values that are secrets are
`SecretStr` and render masked; as a second line of defence, `redact_processor` replaces any
configured secret text that still finds its way into a line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

__all__ = ["configure_logging", "redacting", "scrubber"]

_MASK = "***"


def scrubber(secrets: Iterable[str]) -> Callable[[Any], Any]:
    """A function that returns its argument with every secret text in it masked (deeply)."""
    needles = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for needle in needles:
                if needle in value:
                    value = value.replace(needle, _MASK)
            return value
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(scrub(v) for v in value)
        return value

    return scrub


def redacting(secrets: Iterable[str]) -> structlog.types.Processor:
    """A structlog processor that masks every configured secret in every value of a line."""
    scrub = scrubber(secrets)

    def processor(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return {key: scrub(value) for key, value in event.items()}

    return processor


def _dumps(data: Any, default: Any = None) -> str:
    return orjson.dumps(data, default=str).decode()


def configure_logging(
    *,
    fmt: str = "json",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process (idempotent; a reload calls it again)."""
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redacting(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
