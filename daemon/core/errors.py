"""Every error stocksync raises, grouped by what the caller should do about it.

    StocksyncError
    ├── ConfigError              the file or a secret is wrong: report every fault, exit 2
    ├── StateError               the state store
    │   ├── StateUnusable        damaged, foreign or locked by another process: say so, exit 2
    │   └── StoreUnavailable     a read or write failed (full disk, I/O error): back off, retry
    ├── StartupError             the daemon cannot start (port in use, state unreadable): exit 1
    ├── SourceError              keyCRM could not give us a page
    │   ├── SourceRetryable      network, 5xx, 429, a malformed page: try again (Retry-After)
    │   └── SourceFatal          401/403/404: retrying will not help until an operator acts
    └── ChannelError             a push failed as a whole (per-item outcomes are PushResults)
        ├── ChannelRetryable     network, 5xx, 429: schedule the items again, never drop them
        ├── ChannelRejected      the channel refused the request's content: park its items
        └── ChannelFatal         401/403, missing scope: pause the channel, probe it later

Messages never carry a secret: adapters build them from status codes and response bodies only.
"""

from __future__ import annotations

__all__ = [
    "ChannelError",
    "ChannelFatal",
    "ChannelRejected",
    "ChannelRetryable",
    "ConfigError",
    "SourceError",
    "SourceFatal",
    "SourceRetryable",
    "StartupError",
    "StateError",
    "StateUnusable",
    "StocksyncError",
    "StoreUnavailable",
]


class StocksyncError(Exception):
    """Base of every error stocksync raises on purpose."""


class ConfigError(StocksyncError):
    """The configuration has faults; `faults` holds one `(key, problem)` pair per fault."""

    def __init__(self, faults: list[tuple[str, str]]) -> None:
        self.faults = faults
        super().__init__("; ".join(f"{key}: {problem}" for key, problem in faults))


class StartupError(StocksyncError):
    """Something outside stocksync keeps it from starting; the message says what, in one line."""


class StateError(StocksyncError):
    """The state store failed us."""


class StateUnusable(StateError):
    """The state cannot be used at all: damaged, not ours, or held by another process."""


class StoreUnavailable(StateError):
    """One store call failed for a reason that may pass (full disk, I/O error, busy file).

    `operation` is `read` or `write` (the label of `stocksync_store_errors_total`).
    """

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class LookupQueueFull(StocksyncError):
    """Some SKUs of a webhook did not fit in the look-up queue: the webhook is refused (503),
    so a 202 always means every SKU of it is queued; those that fit stay queued."""

    def __init__(self, dropped: int, cap: int) -> None:
        super().__init__(
            f"{dropped} SKU(s) did not fit in the look-up queue (it holds {cap:,}); send it again"
        )
        self.dropped = dropped


class SourceError(StocksyncError):
    """keyCRM did not give us what we asked for."""

    def __init__(self, message: str, *, status: str = "error") -> None:
        super().__init__(message)
        #: the `status` label of stocksync_keycrm_requests_total for this failure
        self.status = status


class SourceRetryable(SourceError):
    """A transient keyCRM failure; `retry_after` is keyCRM's own hint in seconds, if it gave one."""

    def __init__(
        self, message: str, *, status: str = "error", retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class SourceFatal(SourceError):
    """keyCRM refused us in a way that retrying cannot fix (bad key, wrong URL)."""


class ChannelError(StocksyncError):
    """A whole request to a channel failed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ChannelRetryable(ChannelError):
    """Try the same items again later; `retry_after` (seconds) pauses the whole channel."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ChannelRejected(ChannelError):
    """The channel refused these items for good; they wait until their value changes."""


class ChannelFatal(ChannelError):
    """The channel refuses us as a whole (credentials, scope): pause it and probe later."""
