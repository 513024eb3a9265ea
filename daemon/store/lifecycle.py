"""The item lifecycle: every state a channel item can be in, and every move between them.

This module is the one place the lifecycle is decided. Backends (SQLite and PostgreSQL) load an
item's row, call one of the transitions below, and write back what it returns, inside one
transaction; they never set a status themselves. The four moves every pushed item makes (claim,
an acknowledgement, force, reassert) also exist as SQL over many rows (`daemon.store.moves`):
tests/unit/test_moves.py holds each to its function here, item for item. The functions are pure
and take `now`, so every edge is tested in milliseconds (tests/unit/test_lifecycle.py).

    (new) ──desire──> pending ──claim──> sending ──settle: 2xx, desired unchanged──> ok
                       ^  │                 │  └──settle: 2xx, desired moved──> pending
                       │  └─guard─> held    ├──settle: retryable──> pending (retry time)
                       │                    ├──settle: rejected──> rejected
                       │                    └──release (cancelled, or found at start)──> pending
      ok / rejected ──desire (differs from what the channel may hold)──> pending
      held ──release_held (an operator released the hold, or its scan's verdict)──> pending
      held ──desire (keyCRM shows stock again)──> ok / pending
      any but held ──force (resync)──> pending (backlog); a held item stays held, forced

"What the channel may hold" is the value in flight while `sending`, else the acknowledged one: a
value that returns to the acknowledged one while another is in flight stays pending, so the
value in flight is always followed by the newest one. A zero the scan's guard holds while its
item is in flight is remembered (`held_scan`) and the item lands in `held` when the push ends.
A `sending` item whose process died has an unknown outcome: it goes back to `pending` and is
pushed again (`forced`), even if its desired value equals the acknowledged one, once the request
left on the wire can no longer land after the new one (the channel's timeout).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from daemon.core.models import Outcome, Value, Verdict

__all__ = [
    "BACKLOG",
    "FRESH",
    "Item",
    "Outcomes",
    "Settlement",
    "Status",
    "Timing",
    "claim",
    "desire",
    "drifted",
    "force",
    "reassert",
    "release",
    "release_held",
    "settle",
    "settle_all",
    "zeroing",
]

#: `priority` of an item: fresh changes go before the backlog of a resync.
FRESH = 0
BACKLOG = 1


class Status(enum.StrEnum):
    """The five states; only this module moves an item between them."""

    PENDING = "pending"
    SENDING = "sending"
    OK = "ok"
    HELD = "held"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Timing:
    """A channel's debounce: due once quiet for `debounce`, at most `max_delay` after diverging."""

    debounce: float
    max_delay: float


@dataclass(slots=True)
class Item:
    """One channel item's row, as every backend stores it (values as canonical text)."""

    channel: str
    key: str
    desired: str
    changed_at: float
    status: Status = Status.PENDING
    diverged_at: float | None = None
    acked: str | None = None
    acked_at: float | None = None
    sent: str | None = None
    forced: bool = False
    priority: int = FRESH
    attempts: int = 0
    next_attempt: float = 0.0
    due_at: float | None = None
    last_error: str | None = None
    held_scan: int | None = None

    @property
    def may_hold(self) -> str | None:
        """What the channel may hold now: the value in flight, else the acknowledged one."""
        return self.sent if self.status is Status.SENDING else self.acked


def _is_positive(text: str | None) -> bool:
    return text is not None and Value.decode(text).is_positive


def _schedule(item: Item, timing: Timing) -> None:
    """Set `due_at` of a pending item: debounced, bounded by max_delay, never before its retry."""
    diverged = item.diverged_at if item.diverged_at is not None else item.changed_at
    quiet = min(item.changed_at + timing.debounce, diverged + timing.max_delay)
    item.due_at = max(quiet, item.next_attempt)


def _to_pending(item: Item, timing: Timing, now: float) -> None:
    item.status = Status.PENDING
    item.sent = None
    if item.diverged_at is None:
        item.diverged_at = now
    _schedule(item, timing)


def _to_ok(item: Item) -> None:
    item.status = Status.OK
    item.sent = None
    item.forced = False
    item.priority = FRESH
    item.attempts = 0
    item.next_attempt = 0.0
    item.due_at = None
    item.last_error = None
    item.held_scan = None
    item.diverged_at = None


def _to_held(item: Item, scan: int) -> None:
    item.status = Status.HELD
    item.sent = None
    item.held_scan = scan
    item.due_at = None


def zeroing(item: Item | None, text: str) -> bool:
    """Whether `text` is a new value that takes an item the channel shows in stock to zero.

    These are what a scan's guard counts; the backend asks it before calling `desire`.
    """
    return (
        item is not None
        and text != item.desired
        and _is_positive(item.may_hold)
        and not _is_positive(text)
    )


def desire(
    item: Item | None,
    text: str,
    *,
    channel: str,
    key: str,
    now: float,
    timing: Timing,
    hold_scan: int | None = None,
) -> Item | None:
    """A new desired value. `hold_scan` is set when the scan's guard holds this zero.

    Returns the item to write, or None when nothing changes.
    """
    if item is None:
        fresh = Item(channel, key, text, now)
        if hold_scan is not None:  # unreachable in practice: nothing held is new
            _to_held(fresh, hold_scan)
        else:
            _to_pending(fresh, timing, now)
        return fresh
    if text == item.desired:
        return None
    item.desired = text
    item.changed_at = now
    item.priority = FRESH
    item.attempts = 0
    item.next_attempt = 0.0
    item.last_error = None
    if item.status is Status.SENDING:
        # Settle decides where it goes once the value in flight is answered for: held if a
        # scan held this zero or an earlier one, unless keyCRM shows stock again.
        if hold_scan is not None:
            item.held_scan = hold_scan if item.held_scan is None else item.held_scan
        elif _is_positive(text):
            item.held_scan = None
        return item
    if text == item.may_hold and not item.forced:
        _to_ok(item)
    elif hold_scan is not None:
        _to_held(item, hold_scan if item.held_scan is None else item.held_scan)
    elif item.status is Status.HELD and not _is_positive(text):
        pass  # still a zero: stays held until a person releases it (a look-up's zero too)
    else:
        item.held_scan = None
        _to_pending(item, timing, now)
    return item


def claim(item: Item) -> Item:
    """The dispatcher takes a due pending item: record the value that is about to leave."""
    if item.status is not Status.PENDING:
        raise ValueError(f"cannot claim an item in state {item.status}")
    item.status = Status.SENDING
    item.sent = item.desired
    item.due_at = None
    return item


@dataclass(frozen=True, slots=True)
class Settlement:
    """What `settle` did to one item, beyond its new row."""

    before: str | None
    propagated: float | None
    attempts: int | None


def settle(
    item: Item,
    verdict: Verdict,
    now: float,
    timing: Timing,
    backoff: Callable[[int], float],
) -> Settlement:
    """Apply a push's outcome for one item that was `sending` with `verdict.sent`."""
    before = item.acked
    sent = verdict.sent.encode()
    newer = sent != item.desired or item.held_scan is not None
    if verdict.outcome is Outcome.ACKNOWLEDGED:
        item.acked = sent
        item.acked_at = now
        item.forced = False
        if not newer:
            changed_at = item.changed_at
            _to_ok(item)
            return Settlement(before, changed_at, None)
        item.attempts = 0
        item.next_attempt = 0.0
        item.last_error = None
        item.diverged_at = item.changed_at
        if item.held_scan is not None:
            _to_held(item, item.held_scan)
        elif item.desired == item.acked:
            _to_ok(item)
        else:
            _to_pending(item, timing, now)
        return Settlement(before, None, None)
    item.attempts += 1
    item.last_error = verdict.error
    if verdict.outcome is Outcome.REJECTED and not newer:
        item.status = Status.REJECTED
        item.sent = None
        item.due_at = None
        return Settlement(before, None, item.attempts)
    # A retry, or a rejection of a value that has since changed: try again.
    if newer:
        item.next_attempt = 0.0
    elif verdict.retry_after is not None:
        item.next_attempt = now + verdict.retry_after
    else:
        item.next_attempt = now + backoff(item.attempts)
    if item.held_scan is not None:
        _to_held(item, item.held_scan)
    else:
        _to_pending(item, timing, now)
    return Settlement(before, None, item.attempts)


@dataclass(slots=True)
class Outcomes:
    """What settling one push's verdicts gives a backend to write, in one transaction."""

    writes: list[Item]
    #: history rows: (channel, key, before, after, outcome, error, at)
    history: list[tuple[str, str, str | None, str, str, str | None, float]]
    propagated: list[float]
    attempts: dict[str, int]


def settle_all(
    channel: str,
    current: dict[str, Item],
    verdicts: Sequence[Verdict],
    now: float,
    *,
    timing: Timing,
    backoff: Callable[[int], float],
) -> Outcomes:
    """Apply a push's verdicts to the items as loaded. Only an item still `sending` the very
    value the verdict is about moves (one released or recovered meanwhile does not); every
    verdict is recorded in the history."""
    out = Outcomes([], [], [], {})
    for verdict in verdicts:
        sent = verdict.sent.encode()
        item = current.get(verdict.key)
        before = None if item is None else item.acked
        if item is not None and item.status is Status.SENDING and item.sent == sent:
            done = settle(item, verdict, now, timing, backoff)
            before = done.before
            if done.propagated is not None:
                out.propagated.append(done.propagated)
            if done.attempts is not None:
                out.attempts[verdict.key] = done.attempts
            out.writes.append(item)
        out.history.append(
            (channel, verdict.key, before, sent, str(verdict.outcome), verdict.error, now)
        )
    return out


def release(
    item: Item, now: float, timing: Timing, *, sent: bool = True, not_before: float = 0.0
) -> Item:
    """A claim that ends without an answer. `sent`: the request left (cut off mid-flight, or
    found `sending` at start), so its outcome is unknown and the item is pushed again even if
    its desired value equals the acknowledged one. Not sent (the channel paused first): back
    to where it was, due no earlier than `not_before`.
    """
    if item.status is not Status.SENDING:
        return item
    if sent:
        item.forced = True
    item.next_attempt = not_before
    if item.held_scan is not None:
        _to_held(item, item.held_scan)
    elif item.desired == item.acked and not item.forced:
        _to_ok(item)
    else:
        _to_pending(item, timing, now)
        item.due_at = max(now, not_before)
    return item


def release_held(item: Item, now: float) -> Item:
    """The hold on this zero ends without keyCRM showing stock: an operator released it by
    name, or its scan's verdict found no mass change. It may go out now."""
    item.held_scan = None
    if item.status is not Status.HELD:
        return item  # in flight: settle no longer puts it back in `held`
    if item.desired == item.acked and not item.forced:
        _to_ok(item)
        return item
    item.status = Status.PENDING
    if item.diverged_at is None:
        item.diverged_at = now
    item.due_at = now
    return item


def drifted(item: Item, live: str, now: float) -> bool:
    """The channel was read back holding `live`, not what it acknowledged: push the desired
    value again (lowest priority). Only an item still `ok` with that acknowledgement moves; one
    that changed since it was read is already on its way. Returns whether it moved."""
    if item.status is not Status.OK or live in (item.acked, item.desired):
        return False
    _reassert(item, now)
    return True


def reassert(item: Item, now: float) -> Item:
    """A channel that cannot be read back gets its acknowledged values pushed again on a
    schedule (`reassert_interval`), behind everything else. Only `ok` items: a held zero stays
    held, a rejected value stays parked."""
    if item.status is Status.OK:
        _reassert(item, now)
    return item


def _reassert(item: Item, now: float) -> None:
    item.forced = True
    item.status = Status.PENDING
    item.priority = BACKLOG
    item.diverged_at = now
    item.due_at = now


def force(item: Item, now: float) -> Item:
    """A resync: push this item again whatever was acknowledged, behind fresh changes.

    A held zero stays held (forced, so it is pushed once released): a resync is no evidence
    that a mass change is right, and the scan it starts applies the guard again."""
    item.forced = True
    item.attempts = 0
    item.next_attempt = 0.0
    if item.status in (Status.SENDING, Status.HELD):
        return item
    item.status = Status.PENDING
    item.priority = BACKLOG
    if item.diverged_at is None:
        item.diverged_at = now
    item.due_at = now
    return item
