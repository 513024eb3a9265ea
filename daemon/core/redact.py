"""One process-wide scrubber: every configured secret is masked in every text that leaves us.

Secrets travel as `SecretStr`, so they are masked by construction wherever our own code handles
them. But a channel or keyCRM may echo a credential back in an error body, aiohttp may quote a
request line carrying the webhook token, and an exception may quote either. Those texts reach log
lines, error texts stored in the history, `/status` and command output, so every one of those exits
passes through `scrub()`.

The registry is process-wide, because those exits are (logging, stdout, the listener), and it is
fed from the config: at start and on every reload (`update()`). A secret rotated out by a reload
stays masked for the life of the process: it was a credential, and texts quoting it may still be
in flight. Secrets shorter than `MIN_LENGTH` are not masked (masking "ab" would mangle every text;
`check-config` says so).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar
from urllib.parse import quote

import orjson

__all__ = ["MASK", "MIN_LENGTH", "ScrubbingStream", "scrub", "scrub_text", "update"]

MASK = "***"
MIN_LENGTH = 4

T = TypeVar("T")

_lock = threading.Lock()
_known: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _spellings(secret: str) -> set[str]:
    """The ways a secret can appear in a text: as is, URL-encoded, JSON- and repr-escaped."""
    found = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        orjson.dumps(secret).decode()[1:-1],
        json.dumps(secret)[1:-1],  # ASCII-only JSON, as most servers echo it
        repr(secret.encode())[2:-1],
    }
    return {s for s in found if len(s) >= MIN_LENGTH}


def update(secrets: Iterable[str]) -> None:
    """Add the secrets a (re)loaded config names; earlier ones stay masked."""
    global _pattern  # noqa: PLW0603 -- the registry is process-wide on purpose (module doc)
    fresh = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_LENGTH}
    with _lock:
        if fresh <= _known:
            return
        _known.update(fresh)
        needles = set().union(*(_spellings(s) for s in _known))
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(needles, key=lambda s: (-len(s), s))
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def scrub_text(text: str) -> str:
    """The text with every known secret replaced by `***`."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def scrub(value: T) -> T:
    """The value with every known secret masked, deeply through dicts, lists and tuples."""
    result: Any
    if isinstance(value, str):
        result = scrub_text(value)
    elif isinstance(value, dict):
        result = {scrub(k): scrub(v) for k, v in value.items()}
    elif isinstance(value, list | tuple):
        result = type(value)(scrub(v) for v in value)
    else:
        result = value
    return result  # type: ignore[no-any-return]


class ScrubbingStream:
    """A text stream that masks secrets in everything written to it (the CLI's stdout/stderr).

    Whatever prints (our commands, a log renderer, Python's last-resort traceback printer) passes
    through here, so no code path can forget to scrub. Each `write()` is scrubbed on its own: a
    secret split across two writes is not caught, and nothing in stocksync writes that way.
    """

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(scrub_text(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
