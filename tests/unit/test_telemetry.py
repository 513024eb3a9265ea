"""The metric conventions of design.md: every labelled family has its zero series, no `_created`,
every merchant's family carries `merchant`, and the README's table says exactly what is exported."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from daemon.core.telemetry import Metrics

README = Path(__file__).parents[2] / "README.md"

DESIGN_FAMILIES = {
    "stocksync_sync_lag_seconds": {"merchant", "channel"},
    "stocksync_propagation_seconds": {"merchant", "channel"},
    "stocksync_pending_items": {"merchant", "channel"},
    "stocksync_rejected_items": {"merchant", "channel"},
    "stocksync_channel_up": {"merchant", "channel"},
    "stocksync_push_requests_total": {"merchant", "channel", "outcome"},
    "stocksync_push_request_duration_seconds": {"merchant", "channel"},
    "stocksync_keycrm_requests_total": {"merchant", "kind", "status"},
    "stocksync_keycrm_last_scan_success_timestamp_seconds": {"merchant"},
    "stocksync_keycrm_scan_duration_seconds": {"merchant"},
    "stocksync_skus_tracked": {"merchant"},
    "stocksync_webhook_events_total": {"outcome"},
    "stocksync_resyncs_total": {"merchant", "trigger"},
    "stocksync_config_reloads_total": {"result"},
    "stocksync_guard_blocked_total": {"merchant", "channel"},
    "stocksync_build_info": {"version"},
    "stocksync_keycrm_incomplete_scans_total": {"merchant", "reason"},
    "stocksync_store_errors_total": {"operation"},
    "stocksync_leader": {"merchant"},
    "stocksync_drift_items_total": {"merchant", "channel"},
    "stocksync_verify_last_success_timestamp_seconds": {"merchant", "channel"},
    "stocksync_records_skipped_total": {"merchant", "channel", "reason"},
    "stocksync_guard_held_items": {"merchant", "channel"},
    "stocksync_merchants": {"role"},
}


def exposition(metrics: Metrics | None = None) -> str:
    if metrics is None:
        metrics = Metrics(CollectorRegistry(), "1.2.3")
        metrics.for_merchant("default", ["klump", "pos"])
    return generate_latest(metrics.registry).decode()


def series(text: str, family: str) -> list[str]:
    pattern = re.compile(rf"{family}(_bucket|_count)?[{{ ]")
    return [line for line in text.splitlines() if pattern.match(line)]


def test_every_contract_family_has_a_series_per_channel_from_the_start() -> None:
    text = exposition()
    for family, labels in DESIGN_FAMILIES.items():
        lines = series(text, family)
        assert lines, family
        if "channel" in labels:
            for channel in ("klump", "pos"):
                assert any(f'channel="{channel}"' in line for line in lines), (family, channel)
        for label in labels:
            assert all(f'{label}="' in line for line in lines), (family, label)
        if "merchant" in labels:
            assert all('merchant="default"' in line for line in lines), family
        else:
            assert not any("merchant=" in line for line in lines), family


def exported_labels(metrics: Metrics) -> dict[str, set[str]]:
    """Each stocksync family's name as exposed (`_total` on counters) and its labels."""
    found: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        if not family.name.startswith("stocksync_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = found.setdefault(name, set())
        for sample in family.samples:
            labels.update(k for k in sample.labels if k != "le")
    return found


def test_the_readme_table_names_every_family_with_its_labels() -> None:
    """The README's metrics table is what users build dashboards and alerts on: every family
    exported is in it, with exactly the labels it has (`merchant` included), and no other."""
    section = README.read_text(encoding="utf-8").split("### Metrics\n", 1)[1].split("\n### ", 1)[0]
    documented = {
        name: {label for label in (labels or "").split(",") if label}
        for name, labels in re.findall(r"^\| `(stocksync_\w+)(?:\{([\w,]*)\})?` \|", section, re.M)
    }
    metrics = Metrics(CollectorRegistry(), "1.2.3")
    metrics.for_merchant("default", ["pos"])
    assert documented == exported_labels(metrics)


def test_each_merchant_records_into_its_own_series_and_a_forgotten_one_leaves_none() -> None:
    metrics = Metrics(CollectorRegistry(), "1.2.3")
    acme = metrics.for_merchant("acme", ["pos"])
    bolt = metrics.for_merchant("bolt", ["pos", "klump"])
    acme.sync_lag.labels(channel="pos").set(300)
    acme.skus_tracked.set(7)
    bolt.keycrm_requests.labels(kind="scan", status="429").inc()
    sample = metrics.registry.get_sample_value
    assert sample("stocksync_sync_lag_seconds", {"merchant": "acme", "channel": "pos"}) == 300
    assert sample("stocksync_sync_lag_seconds", {"merchant": "bolt", "channel": "pos"}) == 0
    assert sample("stocksync_skus_tracked", {"merchant": "bolt"}) == 0
    with pytest.raises(TypeError):
        acme.sync_lag.labels(channel="pos", merchant="bolt")  # the view names its merchant
    assert metrics.for_merchant("acme", ["pos"]) is acme  # a reload keeps the counts
    bolt.leader.set(0)  # a standby of bolt
    metrics.set_broken(["cargo"])
    assert metrics.merchant_roles() == {"leading": 1, "standby": 1, "broken": 1}

    metrics.forget_merchant("acme")
    text = exposition(metrics)
    assert 'merchant="acme"' not in text
    assert 'stocksync_skus_tracked{merchant="bolt"} 0.0' in text
    assert 'stocksync_keycrm_requests_total{kind="scan",merchant="bolt",status="429"} 1.0' in text
    assert 'stocksync_merchants{role="leading"} 0.0' in text
    assert 'stocksync_merchants{role="standby"} 1.0' in text
    again = metrics.for_merchant("acme", ["pos"])  # added back: from zero, its series all there
    assert sample("stocksync_sync_lag_seconds", {"merchant": "acme", "channel": "pos"}) == 0
    assert again.leader is not acme.leader
    assert 'stocksync_channel_up{channel="pos",merchant="acme"} 1.0' in exposition(metrics)


def test_records_skipped_has_a_zero_series_for_each_reason() -> None:
    text = exposition()
    for reason in ("empty_key", "unmapped", "no_warehouses"):
        line = (
            f'stocksync_records_skipped_total{{channel="pos",merchant="default",reason="{reason}"}}'
            " 0.0"
        )
        assert line in text


def test_process_and_platform_metrics_are_exported_and_created_series_are_not() -> None:
    text = exposition()
    assert "\nprocess_resident_memory_bytes " in text
    assert "\npython_info{" in text
    assert "_created" not in text


def test_the_leader_is_always_1_with_sqlite() -> None:
    text = exposition()
    assert 'stocksync_leader{merchant="default"} 1.0' in text
    assert 'stocksync_merchants{role="leading"} 1.0' in text


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
