"""The store's fault episodes (`daemon.store.health`): one log line per episode, every failure
counted, and a call that waited through the end of an outage does not open a new one."""

from __future__ import annotations

from structlog.testing import capture_logs

from daemon.store.health import StoreHealth


def test_a_failure_of_a_call_begun_before_the_recovery_is_counted_but_opens_no_episode() -> None:
    now = [100.0]
    errors: list[str] = []
    health = StoreHealth("db", on_error=errors.append, clock=lambda: now[0])
    with capture_logs() as logs:
        health.failed("write", "AdminShutdown", began=100.0)
        health.failed("write", "PoolTimeout", began=100.5)
        now[0] = 104.0
        health.wrote()  # the database is back
        now[0] = 104.1
        health.failed("write", "PoolTimeout", began=103.0)  # waited for the pool through it
        assert health.reason is None
        health.failed("read", "AdminShutdown", began=104.1)  # a new outage
    assert health.reason is not None and "AdminShutdown" in health.reason
    assert errors == ["write", "write", "write", "read"]
    events = [entry["event"] for entry in logs]
    assert events == ["store.unavailable", "store.recovered", "store.unavailable"]
