"""structlog set-up: one JSON object a line on stderr, or a console renderer for a terminal.

Every line has `event`, `level` and an ISO 8601 UTC `timestamp`. Values that are secrets are
`SecretStr` and render masked; as a second line of defence, every line passes through the
process-wide scrubber (`daemon.core.redact`), which replaces any configured secret text that still
finds its way into it. Records of the standard `logging` module (aiohttp, asyncio) are rendered
by the same chain, so a library's message is scrubbed and shaped like ours.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO, cast

import orjson
import structlog

from daemon.core import redact

__all__ = ["configure_logging", "redacting", "scrubber"]

_stdlib_handler: logging.Handler | None = None


def scrubber(secrets: Iterable[str]) -> Callable[[Any], Any]:
    """Add these secrets to the process-wide registry; returns its deep `scrub` function."""
    redact.update(secrets)
    return redact.scrub


def _clean(value: Any) -> Any:
    """A log value scrubbed; objects become text first, since their rendering could quote one."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact.scrub_text(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return redact.scrub_text(str(value))


def redacting(secrets: Iterable[str] = ()) -> structlog.types.Processor:
    """A structlog processor that masks every known secret (these, and the registry's)."""
    redact.update(secrets)

    def processor(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return {key: value if key == "_record" else _clean(value) for key, value in event.items()}

    return processor


def _dumps(data: Any, default: Any = None) -> str:
    return orjson.dumps(data, default=str).decode()


class _CurrentStderr:
    """`sys.stderr` as it is at each write, not as it was at start: `once`'s progress bar (rich)
    swaps in a proxy while it draws, and log lines then print above the bar, not through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    *,
    fmt: str = "json",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process (idempotent; a reload calls it again)."""
    renderer: structlog.types.Processor
    global _stdlib_handler  # noqa: PLW0603 -- one handler per process, replaced on reconfigure
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    redact.update(secrets)
    scrubbing = redacting()
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            scrubbing,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or cast("TextIO", _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or cast("TextIO", _CurrentStderr()))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                stamp,
                structlog.processors.format_exc_info,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                scrubbing,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    root.addHandler(handler)
    _stdlib_handler = handler
    # Libraries' debug chatter (asyncio, aiohttp) stays off unless it is a warning or worse.
    root.setLevel(max(logging.WARNING, logging.getLevelNamesMapping()[level.upper()]))
