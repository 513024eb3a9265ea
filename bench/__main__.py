"""Benchmarks: each figure of issue 9 measured on this machine, printed beside its target.

    python -m bench [--only NAME,...] [--skus N] [--big] [--repeat N] [--json FILE]

Benchmarks (`--only` takes a comma-separated list of these names):
- ingest    in process: records/s planned and stored, paged vs one at a time; CPU per SKU of a
            rescan that finds nothing changed
- memory    peak memory (VmHWM) of a fresh process tracking N SKUs: SQLite state vs dicts
- rate      a real daemon at rate_limit = "100/s", `--items` items: the rate it holds
- baseline  a real daemon vs the naive pull-and-push-all sync, 10,000 SKUs, 1% changing
- resync    a real daemon at N SKUs: worst /healthz stall during a SIGUSR1 resync, peak memory,
            /metrics scrape time, /healthz after a restart
- growth    a real daemon under `--change-rate` changes/s for `--seconds`: state file growth, SKUs
            per keyCRM look-up, variants per Marketplacer request
- ha        three replicas on PostgreSQL under `--change-rate` changes/s: the leader SIGKILLed
            twice, seconds to the first push by the new leader (`--lease-ttl`, default 15 s)
- store     a real daemon's steady-state throughput (acknowledged items/s, batching channel) on
            SQLite and on PostgreSQL, side by side
- orderfeed a real daemon at 60 keyCRM requests a minute, no webhook, N SKUs (default 100,000),
            one order a second for `--seconds` (60): from each order to every channel holding its
            stock (p99, max), the feed's keyCRM requests a minute; beside a run with the feed off
- merchants one real daemon serving `--merchants` merchants (200) x `--skus` SKUs each (5,000)
            x 2 channels through a first sync and a resync: peak memory, worst /healthz,
            webhook freshness at one change/s per merchant (`--seconds`), CPU per acknowledged
            item against a single-merchant daemon; then the merchants sharded over three
            replicas on PostgreSQL (the `shards` figures)
- shards    three replicas on PostgreSQL sharing 60 merchants (fewer with a smaller
            `--merchants`) of 200 SKUs: max - min merchants per replica, seconds to share evenly
            again after a SIGKILL and after a join (`--lease-ttl`); part of `merchants`, alone
            only when named

`--skus` sets every benchmark's size (default: each its own, 20,000 for resync); `--big` runs the
million-SKU sizes (ingest, memory, resync), which take many minutes. `--repeat N` runs each
benchmark N times and prints the median of each figure, every run's value in its note. The real
daemon runs as `python -m daemon run` against the fakes of daemon/simulator/ on loopback. The
PostgreSQL figures run on a throwaway cluster (bench/pgserver.py) and are skipped, with the
reason, when no PostgreSQL server binaries are found.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import anyio
import orjson

from bench import (
    baseline,
    failover,
    growth,
    ingest,
    merchants,
    orderfeed,
    rate,
    resync,
    shards,
    throughput,
)
from bench.options import Options
from bench.report import Figure, Skipped, median_of, table
from daemon.shell.logs import configure_logging

Benchmark = Callable[[Options], Awaitable[list[Figure]]]

BENCHMARKS: dict[str, Benchmark] = {
    "ingest": ingest.run_ingest,
    "memory": ingest.run_memory,
    "rate": rate.run,
    "baseline": baseline.run,
    "resync": resync.run,
    "growth": growth.run,
    "ha": failover.run,
    "store": throughput.run,
    "orderfeed": orderfeed.run,
    "merchants": merchants.run,
    "shards": shards.run,
}
#: what runs without `--only`: `merchants` already ends with the `shards` figures
DEFAULT = [name for name in BENCHMARKS if name != "shards"]


class Outcome(NamedTuple):
    figures: list[Figure]
    failed: dict[str, str]
    skipped: dict[str, str]
    seconds: float


async def main(names: list[str], options: Options) -> Outcome:
    figures: list[Figure] = []
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    started = time.monotonic()
    for name in names:
        print(f"… {name}", file=sys.stderr, flush=True)
        begun = time.monotonic()
        runs: list[list[Figure]] = []
        for _ in range(options.repeat):
            try:
                runs.append(await BENCHMARKS[name](options))
            except Skipped as skip:
                runs.append(skip.figures)
                skipped[name] = skip.reason
                print(f"  {name} skipped: {skip.reason}", file=sys.stderr, flush=True)
                break
            except Exception as exc:  # one broken benchmark must not hide the others' figures
                failed[name] = _reason(exc)
                print(f"  {name} failed: {failed[name]}", file=sys.stderr, flush=True)
                break
        if runs:
            figures += median_of(runs)
        print(f"  {name}: {time.monotonic() - begun:.0f} s", file=sys.stderr, flush=True)
    return Outcome(figures, failed, skipped, time.monotonic() - started)


def _reason(exc: BaseException) -> str:
    """What went wrong, from inside task groups' exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def report(names: list[str], options: Options, outcome: Outcome) -> bytes:
    """The JSON written by `--json`: every figure with its target, ratio and verdict; what
    failed to run, and what could not run here (`skipped`), each with its reason."""
    return orjson.dumps(
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
            "options": {
                "skus": options.skus,
                "items": options.items,
                "big": options.big,
                "seconds": options.seconds,
                "change_rate": options.change_rate,
                "channels": options.channels,
                "lease_ttl": options.lease_ttl,
                "feed_interval": options.feed_interval,
                "merchants": options.merchants,
                "repeat": options.repeat,
            },
            "benchmarks": names,
            "seconds": round(outcome.seconds, 1),
            "figures": [f.as_json() for f in outcome.figures],
            "failed": outcome.failed,
            "skipped": outcome.skipped,
        },
        option=orjson.OPT_INDENT_2,
    )


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def _runs(text: str) -> int:
    runs = int(text)
    if runs < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return runs


def _lease_ttl(text: str) -> float:
    seconds = float(text)
    if seconds < 3:
        raise argparse.ArgumentTypeError("at least 3 (the daemon renews every third of it)")
    return seconds


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="stocksync benchmarks, each figure beside its target"
    )
    parser.add_argument("--only", type=_names, default=DEFAULT, metavar="NAME,...")
    parser.add_argument("--skus", type=int, help="size for every benchmark (default: each its own)")
    parser.add_argument("--big", action="store_true", help="the million-SKU sizes (slow)")
    parser.add_argument("--items", type=int, default=3000, help="items for the rate benchmark")
    parser.add_argument(
        "--seconds",
        type=float,
        help="growth (30), orderfeed (60), merchants (30): how long to drive changes",
    )
    parser.add_argument("--change-rate", type=float, default=100.0, help="growth: changes/s")
    parser.add_argument("--channels", type=int, default=2, help="resync: channels (2 or 4)")
    parser.add_argument(
        "--lease-ttl",
        type=_lease_ttl,
        default=15.0,
        help="ha, shards: the replicas' lease_ttl in s (>= 3)",
    )
    parser.add_argument(
        "--feed-interval", type=float, default=15.0, help="orderfeed: order_feed_interval in s"
    )
    parser.add_argument(
        "--merchants", type=int, default=200, help="merchants: how many (each of --skus SKUs)"
    )
    parser.add_argument(
        "--repeat",
        type=_runs,
        default=1,
        help="run each benchmark N times and print each figure's median (CPU figures on a "
        "shared machine move by a third between runs)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument("--child", choices=("idle", "stocksync", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    if args.child:
        ingest.child(args.child, args.skus or 0)
        return 0
    with tempfile.TemporaryDirectory(prefix="stocksync-bench-") as workdir:
        options = Options(
            workdir=Path(workdir),
            skus=args.skus,
            items=args.items,
            seconds=args.seconds,
            change_rate=args.change_rate,
            channels=args.channels,
            big=args.big,
            lease_ttl=args.lease_ttl,
            feed_interval=args.feed_interval,
            merchants=args.merchants,
            repeat=args.repeat,
        )
        outcome = anyio.run(main, args.only, options)
    print(table(outcome.figures))
    for name, reason in outcome.skipped.items():
        print(f"\n{name}: skipped ({reason})")
    for name, reason in outcome.failed.items():
        print(f"\n{name}: FAILED ({reason})")
    if args.json is not None:
        args.json.write_bytes(report(args.only, options, outcome))
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(cli())
