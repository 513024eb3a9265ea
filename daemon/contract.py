"""Everything an adapter may use of the engine, in one place: adapters import this and nothing
else of `daemon` (tests/unit/test_layout.py walks the imports to keep it so).

It is the extension point's whole surface: the Protocols an adapter implements, the values it
receives and returns, the errors it raises, the settings and secret types its settings model is
built from, and the Retry-After parser. Anything else of the engine can change without touching
a channel.
"""

from __future__ import annotations

from daemon.config.settings import BaseUrl, Settings
from daemon.core.bodies import MAX_BODY_BYTES, BodyTooLarge, read_body
from daemon.core.channel import (
    Channel,
    ChannelContext,
    ChannelSpec,
    Probe,
    Probeable,
    Readable,
    Shape,
    readable,
)
from daemon.core.errors import ChannelError, ChannelFatal, ChannelRejected, ChannelRetryable
from daemon.core.models import ItemValue, Outcome, PushResult, Value, join_key, split_key
from daemon.core.neterrors import describe_network_error
from daemon.core.redact import scrub_text
from daemon.core.retry_after import parse_retry_after
from daemon.core.secrets import EnvSecret, FileSecret, pick

__all__ = [
    "MAX_BODY_BYTES",
    "BaseUrl",
    "BodyTooLarge",
    "Channel",
    "ChannelContext",
    "ChannelError",
    "ChannelFatal",
    "ChannelRejected",
    "ChannelRetryable",
    "ChannelSpec",
    "EnvSecret",
    "FileSecret",
    "ItemValue",
    "Outcome",
    "Probe",
    "Probeable",
    "PushResult",
    "Readable",
    "Settings",
    "Shape",
    "Value",
    "describe_network_error",
    "join_key",
    "parse_retry_after",
    "pick",
    "read_body",
    "readable",
    "scrub_text",
    "split_key",
]
