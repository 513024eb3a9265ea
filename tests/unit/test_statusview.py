"""How `status` words the daemon's state: relative times, up/degraded/down, progress."""

from __future__ import annotations

from daemon.commands.statusview import ago, channel_state, duration, render

NOW = 1_800_000_000.0


def test_durations_read_like_a_person_says_them() -> None:
    assert [duration(s) for s in (0, 41, 130, 3600, 3900, 90000)] == [
        "0s",
        "41s",
        "2m 10s",
        "1h",
        "1h 5m",
        "1d 1h",
    ]


def test_times_are_relative_and_never_none() -> None:
    assert ago(None, NOW) == "never"
    assert ago(NOW - 0.2, NOW) == "just now"
    assert ago(NOW - 120, NOW) == "2m ago"
    assert ago("2027-01-15T07:58:00+00:00", NOW) == "2m ago"


def test_a_channel_unreachable_for_long_is_down_not_up() -> None:
    healthy = {"up": True, "pending": 0, "lag_seconds": 0.0, "last_error": None}
    assert channel_state(healthy) == "up"
    # an old error, nothing waiting: up
    assert channel_state({**healthy, "last_error": "pos: HTTP 500"}) == "up"
    refusing = {"up": True, "pending": 20, "last_error": "pos: no answer: connection refused"}
    assert channel_state({**refusing, "lag_seconds": 10}) == "up"
    assert channel_state({**refusing, "lag_seconds": 90}) == "degraded"
    assert channel_state({**refusing, "lag_seconds": 900}) == "down"
    assert channel_state({**healthy, "paused": True}) == "degraded"
    assert channel_state({**healthy, "up": False}) == "down"


def test_render_shows_progress_with_an_eta_and_never_for_a_missing_scan() -> None:
    data = {
        "version": "1.0",
        "ready": True,
        "source": {
            "scan_running": True,
            "scan_page": 12,
            "scan_last_page": 40,
            "scan_eta": 70,
            "last_scan_success": None,
            "first_scan_done": False,
        },
        "channels": {"klump": {"up": True, "pending": 3, "lag_seconds": 4.2}},
    }
    text = render(data, NOW)
    assert "last complete scan never" in text
    assert "scanning page 12/40, ETA 1m 10s (first scan since a cold start)" in text
    assert "klump" in text and "None" not in text


def test_a_replica_says_its_role_who_leads_and_the_queue() -> None:
    standby = {
        "merchant": "default",
        "replica": "pod-b",
        "role": "standby",
        "leader": "pod-a",
        "epoch": 4,
        "lookups_queued": 12,
        "lookups_oldest_seconds": 130.0,
    }
    text = render({"version": "1", "ready": True, "replica": standby}, NOW)
    assert (
        "replica pod-b: standby of merchant default; leader pod-a, epoch 4; "
        "12 look-ups queued, oldest 2m 10s"
    ) in text
    nobody = render({"ready": True, "replica": {**standby, "leader": None}}, NOW)
    assert "leader nobody (the lease has run out)" in nobody
    assert "replica: cannot read the lease" in render(
        {"ready": False, "replica": {"error": "cannot read the lease: OperationalError"}}, NOW
    )
    assert "replica" not in render({"ready": True}, NOW)  # SQLite: one process, no line


def test_a_channel_on_hold_says_since_when_why_and_the_way_out() -> None:
    hold = {"held": 286, "since": NOW - 600, "reason": "scan 12 would zero 286 of 286 in-stock"}
    data = {"ready": True, "channels": {"mp": {"up": True, "held": 286, "guard": hold}}}
    text = render(data, NOW)
    assert "HELD      mp: 286 zeros held by the mass-change guard since 10m ago: scan 12" in text
    assert "stocksync guard release --channel mp" in text
    assert "HELD" not in render({"channels": {"mp": {"up": True, "guard": None}}}, NOW)


def test_a_replica_whose_config_differs_from_the_leaders_says_which_two() -> None:
    config = {
        "fingerprint": "3f0c9a1d2b7e",
        "generation": 1,
        "leader_fingerprint": "9e41d07c55a2",
        "leader_generation": 2,
        "newest_live_generation": 2,
        "differs_from_leader": True,
    }
    standby = {
        "merchant": "default",
        "replica": "pod-b",
        "role": "standby",
        "leader": "pod-a",
        "epoch": 4,
        "lookups_queued": 0,
        "config": config,
    }
    text = render({"version": "1", "ready": True, "replica": standby}, NOW)
    assert (
        "config differs from leader's: this replica runs 3f0c9a1d2b7e (generation 1), "
        "the leader 9e41d07c55a2 (generation 2)"
    ) in text
    same = {**standby, "config": {**config, "differs_from_leader": False}}
    assert "differs" not in render({"ready": True, "replica": same}, NOW)
