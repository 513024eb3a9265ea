"""The bench runs end to end at a tiny size and writes the JSON that its readers expect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.pgserver import NO_BINARIES, find_bindir
from bench.report import Figure, median_of
from bench.throughput import steady_rate

FIELDS = {"benchmark", "name", "what", "value", "unit", "target", "better", "note", "ratio", "met"}


def bench(
    tmp_path: Path, *args: str, timeout: float, env: dict[str, str] | None = None
) -> tuple[str, dict[str, Any]]:
    """`python -m bench ARGS --json FILE`: what it printed and the report it wrote."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, orjson.loads(out.read_bytes())


def run_bench(tmp_path: Path, *args: str, timeout: float = 50) -> dict[str, Any]:
    printed, report = bench(tmp_path, *args, timeout=timeout)
    assert "| figure | measured | target | ratio |" in printed
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
def test_order_feed_figures(tmp_path: Path) -> None:
    args = ("--only", "orderfeed", "--skus", "200", "--seconds", "3", "--feed-interval", "1")
    report = run_bench(tmp_path, *args)
    assert report["options"]["feed_interval"] == 1
    figures = by_name(report)
    p99 = figures["orderfeed.freshness_p99"]
    assert p99["target"] == 1 + 2 + 2  # order_feed_interval + debounce + 2 s
    assert p99["value"] is not None  # every sale reached both channels and was timed
    assert figures["orderfeed.requests_per_minute"]["value"] > 0
    assert {"orderfeed.freshness_max", "orderfeed.off_reached", "orderfeed.off_next_scan"} <= set(
        figures
    )


@pytest.mark.bench
def test_baseline_against_the_naive_sync(tmp_path: Path) -> None:
    figures = by_name(run_bench(tmp_path, "--only", "baseline", "--skus", "200"))
    assert figures["baseline.channel_requests"]["value"] >= 1
    assert figures["baseline.naive_channel_requests"]["value"] >= 200 / 25


@pytest.mark.bench
@pytest.mark.timeout(120)
def test_failover_and_store_throughput_on_postgresql(tmp_path: Path) -> None:
    if find_bindir() is None:
        if os.environ.get("CI"):
            pytest.fail(NO_BINARIES + " (.ci/run installs it)")
        pytest.skip(NO_BINARIES)
    args = ("--only", "ha,store", "--skus", "200", "--lease-ttl", "3", "--change-rate", "20")
    report = run_bench(tmp_path, *args, timeout=110)
    assert report["skipped"] == {}
    assert report["options"]["lease_ttl"] == 3
    figures = by_name(report)
    failover = figures["ha.failover"]
    assert failover["target"] == 3 + 5  # the bound: lease TTL + 5 s
    assert failover["better"] == "lower"
    assert 0 < failover["value"] <= 3 + 5
    assert figures["ha.lease_ttl"]["value"] == 3
    sqlite, postgresql = figures["store.throughput_sqlite"], figures["store.throughput_postgresql"]
    assert sqlite["value"] > 0 and postgresql["value"] > 0
    # Informational: SQLite's figure stands as the target, PostgreSQL's ratio is relative to it.
    assert postgresql["target"] == sqlite["value"]
    assert postgresql["met"] is None
    assert postgresql["ratio"] == pytest.approx(postgresql["value"] / sqlite["value"])


def without_postgresql(tmp_path: Path, *args: str, timeout: float) -> tuple[str, dict[str, Any]]:
    # STOCKSYNC_PG_BINDIR set to a folder without binaries: the only place looked.
    env = {**os.environ, "STOCKSYNC_PG_BINDIR": str(tmp_path)}
    return bench(tmp_path, *args, timeout=timeout, env=env)


def test_failover_is_skipped_with_the_reason_without_a_postgresql_server(tmp_path: Path) -> None:
    printed, report = without_postgresql(tmp_path, "--only", "ha", timeout=20)
    assert "ha: skipped (no PostgreSQL server binaries (initdb) found" in printed
    assert report["skipped"]["ha"].startswith("no PostgreSQL server binaries")
    assert report["figures"] == []


@pytest.mark.bench
def test_store_throughput_keeps_the_sqlite_figure_without_a_postgresql_server(
    tmp_path: Path,
) -> None:
    printed, report = without_postgresql(tmp_path, "--only", "store", "--skus", "200", timeout=50)
    assert "store: skipped (PostgreSQL figure: no PostgreSQL server binaries" in printed
    assert [f["name"] for f in report["figures"]] == ["store.throughput_sqlite"]
    assert report["figures"][0]["value"] > 0


def test_repeat_prints_the_median_of_the_runs(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "--only", "memory", "--skus", "300", "--repeat", "3")
    assert report["options"]["repeat"] == 3
    names = [f["name"] for f in report["figures"]]
    assert len(names) == len(set(names))  # one figure per name, not one per run
    for figure in report["figures"]:
        assert "median of 3: " in figure["note"]


def test_the_median_is_judged_against_the_target() -> None:
    def cpu(value: float | None) -> Figure:
        return Figure("resync", "resync.ack_cpu", "CPU", value, "µs", 40.0, "lower", "20k")

    runs = [[cpu(52.0)], [cpu(35.0)], [cpu(38.0)], [cpu(None)]]
    (figure,) = median_of(runs)
    assert figure.value == 38.0
    assert figure.met is True  # one slow run of three does not flip the verdict
    assert figure.note == "20k; median of 3: 52.0 µs, 35.0 µs, 38.0 µs"
    assert median_of([[cpu(52.0)]]) == [cpu(52.0)]  # one run: as measured


def test_steady_rate_leaves_out_the_start_and_the_tail() -> None:
    # 100 items in the first second (replan, paging), then 1,000 items/s, then a slow tail.
    samples = [(0.0, 0), (1.0, 100), *((1.0 + n / 10, 100 + n * 100) for n in range(1, 9))]
    samples.append((5.0, 1000))
    assert steady_rate(samples, 1000) == pytest.approx(1000.0)
    assert steady_rate([(0.0, 0), (0.02, 200)], 200) == pytest.approx(10_000.0)  # tiny: all


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


@pytest.mark.bench
@pytest.mark.timeout(150)
def test_many_merchants_in_one_process_and_over_replicas(tmp_path: Path) -> None:
    if find_bindir() is None and os.environ.get("CI"):
        pytest.fail(NO_BINARIES + " (.ci/run installs it)")
    args = ("--only", "merchants", "--merchants", "6", "--skus", "40", "--seconds", "1")
    _, report = bench(tmp_path, *args, "--lease-ttl", "3", timeout=140)
    assert report["failed"] == {}
    assert report["options"]["merchants"] == 6
    figures = by_name(report)
    assert figures["merchants.peak_memory"]["target"] == 600 * 2**20
    assert figures["merchants.healthz_worst"]["target"] == 0.1
    assert figures["merchants.freshness_p99"]["target"] == 3.0  # the default debounce + 1 s
    assert figures["merchants.freshness_p99"]["value"] is not None  # changes were timed
    assert "6 merchants x 40 SKUs x 2 channels" in figures["merchants.peak_memory"]["note"]
    ratio = figures["merchants.ack_cpu_ratio"]
    assert ratio["target"] == 1.0
    # At 40 SKUs a single merchant's resync may cost under one CPU tick (10 ms): no ratio then,
    # and the figure says so rather than dividing by zero.
    assert ratio["value"] is None or ratio["value"] > 0
    assert ratio["value"] is not None or "too small" in ratio["note"]
    if find_bindir() is None:
        assert report["skipped"]["merchants"].startswith("sharding figures: no PostgreSQL")
        assert "merchants.replicas" not in figures
        return
    # The same six merchants over three replicas (then two, then three again) on PostgreSQL.
    assert report["skipped"] == {}
    shares = figures["merchants.replicas"]
    assert (shares["target"], shares["better"]) == (1, "lower")
    assert shares["value"] == 0  # 2, 2, 2
    assert "6 merchants x 40 SKUs x 2 channels, lease_ttl 3 s" in shares["note"]
    kill, join = figures["merchants.replicas_kill"], figures["merchants.replicas_join"]
    assert kill["target"] == 3 + 5  # the bounds: lease_ttl + 5 s, 2 x lease_ttl
    assert join["target"] == 2 * 3
    assert 0 < kill["value"] <= 3 + 5
    assert 0 < join["value"] <= 2 * 3
    assert "killed a (2 merchants); then b 3, c 3;" in kill["note"]
    assert "then b 2, c 2, d 2;" in join["note"]
