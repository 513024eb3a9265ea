"""The drift report's rules: what counts as agreement, drift and missing (pure, no I/O)."""

from __future__ import annotations

from daemon.commands.drift import DriftReport, render_text
from daemon.core.models import Value
from daemon.send.readback import ChannelDrift, Drifted, classify
from daemon.send.readback import recheck as _recheck
from daemon.store import ItemRow


def row(key: str, desired: int, acked: int | None, status: str = "ok") -> ItemRow:
    return ItemRow(
        channel="mp",
        key=key,
        desired=Value(quantity=desired),
        acked=None if acked is None else Value(quantity=acked),
        status=status,
        attempts=0,
        last_error=None,
        diverged_at=None,
        changed_at=0.0,
    )


def test_agreement_is_the_acknowledged_or_the_desired_value() -> None:
    into = ChannelDrift("mp")
    classify(row("a", 5, 5), Value(quantity=5), into)
    # pending 7 -> the channel still holds the acknowledged 5: the daemon will push, no drift
    classify(row("b", 7, 5, "pending"), Value(quantity=5), into)
    # the push of 7 landed after the state was read: no drift either
    classify(row("c", 7, 5, "pending"), Value(quantity=7), into)
    classify(row("d", 5, 5), Value(quantity=9), into)
    classify(row("e", 5, 5), None, into)
    assert into.agree == 3
    assert into.drifted == [Drifted("d", Value(quantity=5), Value(quantity=5), Value(quantity=9))]
    assert into.missing == ["e"]
    assert not into.clean


def test_drift_explained_by_a_push_during_the_report_is_dropped() -> None:
    into = ChannelDrift("mp")
    classify(row("a", 5, 5), Value(quantity=8), into)
    classify(row("b", 5, 5), Value(quantity=9), into)
    _recheck(into, [row("a", 8, 8), row("b", 6, 6)])  # the daemon pushed 8 to "a" meanwhile
    assert [d.key for d in into.drifted] == ["b"]
    assert into.agree == 1


def test_text_names_every_finding_and_the_channels_without_read_back() -> None:
    into = ChannelDrift("mp", checked=3, agree=1, unacknowledged=2)
    into.drifted.append(Drifted("k1", Value(quantity=4), Value(quantity=4), Value(quantity=11)))
    into.unreadable.append("k2")
    text = render_text(DriftReport(channels=[into], not_readable=["klump"]))
    assert text.splitlines() == [
        "mp: 3 checked, 1 in agreement, 1 drifted, 0 missing, 1 unreadable "
        "(2 not yet acknowledged)",
        "  drifted     k1  desired qty=4  acknowledged qty=4  live qty=11",
        "  unreadable  k2",
        "klump: no read-back in the API (set reassert_interval to push acknowledged values "
        "again on a schedule)",
    ]
