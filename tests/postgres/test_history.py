"""`stocksync history` on a PostgreSQL state: the same trail, filters and output as on SQLite.

A SQLite state with a few hours of pushes is copied into PostgreSQL (`migrate-state`); every
filter then prints the same bytes from both. The password comes as the daemon takes it, and a
wrong one, or a server that does not answer, is one line on stderr that never holds it.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import anyio
import psycopg
import pytest
from psycopg import sql

from daemon.commands.cli import main
from daemon.core.models import Outcome, StockLevel, Value, Verdict
from daemon.rules.plan import Contribution
from daemon.store import SQLiteStore, Timing
from tests.integration.test_lifecycle import free_port
from tests.postgres.test_ha import url_dsn

T = Timing(debounce=0.0, max_delay=30.0)
CHANNELS = ("shop", "pos")
AGES = (3 * 3600, 90 * 60, 10 * 60, 30)  # seconds before now of each round of pushes


def backoff(_attempt: int) -> float:
    return 5.0


async def build(path: Path, now: float) -> None:
    """Three SKUs on two channels, pushed in four rounds over three hours; one rejection."""
    store = SQLiteStore(path)
    skus = [f"S{n}" for n in range(3)]
    levels = [
        StockLevel(sku, n, Decimal(n), Decimal(0), Decimal("9.5")) for n, sku in enumerate(skus)
    ]
    await store.save_stock(levels, 1)
    for channel in CHANNELS:
        shares = [(sku, Contribution(f"{channel}-{sku}", Decimal(1), None)) for sku in skus]
        await store.replace_shares(channel, skus, shares)
    for round_, age in enumerate(AGES):
        for offset, channel in enumerate(CHANNELS, start=1):
            at = now - age + offset  # no two pushes of one SKU at the same moment
            desired = {
                f"{channel}-{sku}": Value(quantity=n + round_, price=Decimal("9.5") + round_)
                for n, sku in enumerate(skus)
            }
            await store.set_desired(channel, desired, at, T)
            claimed = await store.claim(channel, at, 10)
            verdicts = [
                Verdict(i.key, i.value, Outcome.REJECTED, error="unknown product")
                if round_ == 2 and i.key == f"{channel}-S1"
                else Verdict(i.key, i.value, Outcome.ACKNOWLEDGED)
                for i in claimed
            ]
            await store.settle(channel, verdicts, at, T, backoff)
    await store.close()


@pytest.fixture
def states(tmp_path: Path, pg_dsn: str) -> tuple[Path, str]:
    """The same state as a SQLite file and in PostgreSQL (as `daemon.state` takes it)."""
    path = tmp_path / "state.db"
    anyio.run(build, path, time.time())
    assert main(["migrate-state", "--from", str(path), "--to", pg_dsn]) == 0
    return path, url_dsn(pg_dsn)


def history(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["history", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "filters",
    [
        [],
        ["--limit", "3"],
        ["--limit", "0"],
        ["--channel", "pos"],
        ["--since", "2h"],
        ["--since", "2h", "--channel", "shop", "--limit", "2"],
        ["--json"],
        ["--json", "--since", "1h", "--limit", "0"],
    ],
)
def test_history_reads_the_same_from_postgresql(
    states: tuple[Path, str], capsys: pytest.CaptureFixture[str], filters: list[str]
) -> None:
    path, dsn = states
    for sku in ("S1", "S2"):
        from_sqlite = history(capsys, sku, "--state", str(path), *filters)
        from_postgres = history(capsys, sku, "--state", dsn, *filters)
        assert from_sqlite[0] == 0 and from_sqlite[1]
        assert from_postgres == from_sqlite


def test_history_reads_daemon_state_and_an_unknown_sku(
    states: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, dsn = states
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\nstate = "{dsn}"\n')
    code, out, _ = history(capsys, "-c", str(config), "S1", "--limit", "0")
    assert code == 0
    assert out == history(capsys, "S1", "--state", str(path), "--limit", "0")[1]
    assert "rejected  unknown product" in out
    assert len(out.splitlines()) == len(AGES) * len(CHANNELS)
    assert history(capsys, "-c", str(config), "NOPE") == (0, "no pushes recorded for NOPE\n", "")
    # A channel the state never held is named, from either backend alike (issue 22).
    unknown = history(capsys, "-c", str(config), "S1", "--channel", "nope")
    assert unknown == history(capsys, "S1", "--state", str(path), "--channel", "nope")
    assert unknown[0] == 2 and unknown[2].startswith("--channel: no channel 'nope' in this state")


def test_history_reads_nothing_else_and_writes_nothing(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database without a stocksync state is said to be one; it is not migrated into one."""
    code, out, err = history(capsys, "S1", "--state", url_dsn(pg_dsn))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "holds no stocksync state" in err
    with psycopg.connect(pg_dsn) as db:
        assert db.execute("SELECT to_regclass('history')").fetchone() == (None,)


@pytest.fixture
def guarded(
    states: tuple[Path, str], pg_dsn: str, password_role: tuple[str, str]
) -> tuple[str, str]:
    """The state's DSN as a role that logs in with a password, and that password."""
    role, password = password_role
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        # The state is merchant default's schema (the shared tables stay in public).
        for grant in (
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}",
            "GRANT USAGE ON SCHEMA stocksync_default TO {}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA stocksync_default TO {}",
        ):
            db.execute(sql.SQL(grant).format(sql.Identifier(role)))
    _, dsn = states
    return dsn.replace("postgresql://postgres@", f"postgresql://{role}@"), password


def test_history_takes_the_password_as_the_daemon_does(
    guarded: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn, password = guarded
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    bare = history(capsys, "S1", "--state", dsn)
    assert bare[0] == 1 and "password" in bare[2]  # libpq had none to give
    monkeypatch.setenv("T_DB_PASSWORD", password)
    by_env = tmp_path / "env.toml"
    by_env.write_text(f'[daemon]\nstate = "{dsn}"\nstate_password_env = "T_DB_PASSWORD"\n')
    code, out, err = history(capsys, "-c", str(by_env), "S1")
    assert (code, err) == (0, "") and "shop" in out
    secret = tmp_path / "db-password"
    secret.write_text(password + "\n")
    by_file = tmp_path / "file.toml"
    by_file.write_text(f'[daemon]\nstate = "{dsn}"\nstate_password_file = "{secret}"\n')
    assert history(capsys, "-c", str(by_file), "S1") == (code, out, err)
    monkeypatch.setenv("PGPASSWORD", password)  # libpq's own, with --state and no config
    assert history(capsys, "--state", dsn, "S1") == (code, out, err)


def test_a_wrong_password_is_one_line_without_the_secret(
    guarded: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    dsn, _ = guarded
    wrong = "wrong-" + "x" * 12
    monkeypatch.setenv("T_DB_PASSWORD", wrong)
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\nstate = "{dsn}"\nstate_password_env = "T_DB_PASSWORD"\n')
    code, out, err = history(capsys, "-c", str(config), "S1")
    assert code == 1 and out == ""
    assert err.startswith("cannot read the state in ") and err.count("\n") == 1
    assert "password authentication failed" in err
    assert wrong not in err


def test_an_unreachable_server_is_one_line_without_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cret-" + "y" * 12
    monkeypatch.setenv("T_DB_PASSWORD", secret)
    monkeypatch.setenv("PGPASSWORD", secret)
    port = free_port()  # nothing listens there
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate = "postgresql://app@127.0.0.1:{port}/stocksync"\n'
        'state_password_env = "T_DB_PASSWORD"\n'
    )
    code, out, err = history(capsys, "-c", str(config), "S1")
    assert code == 1 and out == ""
    assert err.startswith(f"cannot read the state in app@127.0.0.1:{port}/stocksync: ")
    assert err.count("\n") == 1 and "refused" in err.lower()
    assert secret not in err
    code, _, err = history(capsys, "S1", "--state", "postgresql://app:hunter2@127.0.0.1/x")
    assert code == 2 and "must not contain the password" in err and "hunter2" not in err
