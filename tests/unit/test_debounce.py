from daemon.debounce import Debouncer
from daemon.store import Pending


def pending(
    key: str,
    changed: float,
    diverged: float | None = None,
    *,
    retry: float = 0.0,
    fresh: bool = True,
) -> Pending:
    return Pending("c", key, changed, changed if diverged is None else diverged, retry, fresh)


def test_waits_for_quiet_then_releases() -> None:
    d = Debouncer(debounce=2, max_delay=30)
    d.touch(pending("a", 100))
    assert d.take(101, 10) == []
    assert d.next_due() == 102
    assert d.take(102, 10) == ["a"]


def test_rapid_changes_collapse_but_max_delay_caps_the_wait() -> None:
    d = Debouncer(debounce=2, max_delay=5)
    for t in range(100, 110):
        d.touch(pending("a", t, diverged=100))
        taken = d.take(t, 10)
        if t < 105:
            assert taken == []
        elif t == 105:
            assert taken == ["a"]
    assert len(d) == 1  # in flight


def test_in_flight_items_are_not_handed_out_twice_and_come_back_after_done() -> None:
    d = Debouncer(debounce=0, max_delay=1)
    d.touch(pending("a", 0))
    assert d.take(0, 10) == ["a"]
    d.touch(pending("a", 1))  # changed while in flight
    assert d.take(5, 10) == []
    d.done("a")
    assert d.take(5, 10) == ["a"]


def test_fresh_changes_go_before_the_resync_backlog() -> None:
    d = Debouncer(debounce=0, max_delay=1)
    for key in ("x", "y", "z"):
        d.touch(pending(key, 0, fresh=False))
    d.touch(pending("new", 5))
    assert d.take(5, 2) == ["new", "x"]


def test_retry_time_holds_and_flush_releases_debounced_items() -> None:
    d = Debouncer(debounce=10, max_delay=60)
    d.touch(pending("a", 0))
    d.touch(pending("b", 0, retry=50))
    d.flush(1)
    assert d.take(1, 10) == ["a"]
    assert d.next_due() == 50


def test_batches_are_limited() -> None:
    d = Debouncer(debounce=0, max_delay=1)
    for i in range(5):
        d.touch(pending(str(i), 0))
    assert len(d.take(0, 3)) == 3
    assert len(d.take(0, 3)) == 2
