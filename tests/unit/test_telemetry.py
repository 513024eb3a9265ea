"""The metric conventions of design.md: every labelled family has its zero series, no `_created`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from daemon.core.telemetry import Metrics

DESIGN_FAMILIES = {
    "stocksync_sync_lag_seconds": {"channel"},
    "stocksync_propagation_seconds": {"channel"},
    "stocksync_pending_items": {"channel"},
    "stocksync_rejected_items": {"channel"},
    "stocksync_channel_up": {"channel"},
    "stocksync_push_requests_total": {"channel", "outcome"},
    "stocksync_push_request_duration_seconds": {"channel"},
    "stocksync_keycrm_requests_total": {"kind", "status"},
    "stocksync_keycrm_last_scan_success_timestamp_seconds": set(),
    "stocksync_keycrm_scan_duration_seconds": set(),
    "stocksync_skus_tracked": set(),
    "stocksync_webhook_events_total": {"outcome"},
    "stocksync_resyncs_total": {"trigger"},
    "stocksync_config_reloads_total": {"result"},
    "stocksync_guard_blocked_total": {"channel"},
    "stocksync_build_info": {"version"},
    "stocksync_keycrm_incomplete_scans_total": {"reason"},
    "stocksync_store_errors_total": {"operation"},
    "stocksync_leader": {"merchant"},
    "stocksync_drift_items_total": {"channel"},
    "stocksync_verify_last_success_timestamp_seconds": {"channel"},
    "stocksync_records_skipped_total": {"channel", "reason"},
    "stocksync_guard_held_items": {"channel"},
}


def exposition() -> str:
    metrics = Metrics(CollectorRegistry(), ["klump", "pos"], "1.2.3")
    return generate_latest(metrics.registry).decode()


def test_every_contract_family_has_a_series_per_channel_from_the_start() -> None:
    text = exposition()
    for family, labels in DESIGN_FAMILIES.items():
        series = [
            line for line in text.splitlines() if re.match(rf"{family}(_bucket|_count)?[{{ ]", line)
        ]
        assert series, family
        if "channel" in labels:
            for channel in ("klump", "pos"):
                assert any(f'channel="{channel}"' in line for line in series), (family, channel)
        for label in labels:
            assert all(f'{label}="' in line for line in series), (family, label)


def test_records_skipped_has_a_zero_series_for_each_reason() -> None:
    text = exposition()
    for reason in ("empty_key", "unmapped", "no_warehouses"):
        line = f'stocksync_records_skipped_total{{channel="pos",reason="{reason}"}} 0.0'
        assert line in text


def test_process_and_platform_metrics_are_exported_and_created_series_are_not() -> None:
    text = exposition()
    assert "\nprocess_resident_memory_bytes " in text
    assert "\npython_info{" in text
    assert "_created" not in text


def test_the_leader_is_always_1_with_sqlite() -> None:
    assert 'stocksync_leader{merchant="default"} 1.0' in exposition()


def test_no_config_mismatch_is_exported_from_the_start() -> None:
    assert 'stocksync_config_mismatch{merchant="default"} 0.0' in exposition()


def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        check=False,
        input=exposition(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
