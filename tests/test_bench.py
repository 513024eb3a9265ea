"""The bench runs end to end at a tiny size and writes the JSON that its readers expect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

FIELDS = {"benchmark", "name", "what", "value", "unit", "target", "better", "note", "ratio", "met"}


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| figure | measured | target | ratio |" in result.stdout
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    assert report["failed"] == {}
    for figure in report["figures"]:
        assert set(figure) == FIELDS
        assert isinstance(figure["value"], int | float)
    return report


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in report["figures"]}


def test_in_process_figures_and_the_channel_rate(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "--only", "ingest,memory,rate", "--skus", "300", "--items", "60")
    figures = by_name(report)
    assert report["benchmarks"] == ["ingest", "memory", "rate"]
    assert {"ingest.rescan_cpu", "memory.stocksync", "rate.held", "rate.busiest_second"} <= set(
        figures
    )
    held = figures["rate.held"]
    assert held["target"] == 0.97
    assert held["better"] == "higher"
    assert held["met"] is (held["value"] >= 0.97)
    assert figures["memory.stocksync"]["unit"] == "B"
    assert figures["memory.stocksync"]["value"] > 10 * 2**20  # a VmHWM, not a KiB count


@pytest.mark.bench
def test_real_daemon_figures(tmp_path: Path) -> None:
    report = run_bench(
        tmp_path,
        "--only",
        "resync,growth",
        "--skus",
        "200",
        "--seconds",
        "1",
        "--change-rate",
        "20",
    )
    figures = by_name(report)
    assert {
        "resync.healthz_worst_stall",
        "resync.peak_memory",
        "restart.healthz_seconds",
        "resync.rescan_cpu",
        "resync.ack_cpu",
        "growth.state_bytes_per_minute",
        "growth.keycrm_skus_per_lookup",
        "growth.freshness_p99",
    } <= set(figures)
    assert figures["resync.healthz_worst_stall"]["target"] == 0.1
    assert figures["growth.freshness_p99"]["value"] is not None  # some changes were timed
    assert figures["growth.freshness_p99"]["target"] == 3.0


@pytest.mark.bench
def test_baseline_against_the_naive_sync(tmp_path: Path) -> None:
    figures = by_name(run_bench(tmp_path, "--only", "baseline", "--skus", "200"))
    assert figures["baseline.channel_requests"]["value"] >= 1
    assert figures["baseline.naive_channel_requests"]["value"] >= 200 / 25


def test_unknown_benchmark_names_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown benchmark nope" in result.stderr
