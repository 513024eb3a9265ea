"""`daemon.state` as a PostgreSQL DSN: its password from a secret, never from the file."""

from pathlib import Path

import pytest

from adapters import ADAPTERS
from daemon.commands.cli import main
from daemon.config.dsn import describe
from daemon.config.settings import load_config
from tests.unit.test_config import GOOD, faults, write

DSN = "postgresql://stocksync@db.example.com:5432/stocksync?sslmode=require"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_KEY", "secret-key-value")
    monkeypatch.setenv("T_POS", "secret-pos-value")
    monkeypatch.setenv("T_DB_PASSWORD", "secret-db-password")
    monkeypatch.delenv("STOCKSYNC_CONFIG", raising=False)


def with_daemon(lines: str) -> str:
    return GOOD.replace('state = "state.db"', lines)


def test_a_dsn_state_selects_postgresql_with_its_password_from_a_secret(tmp_path: Path) -> None:
    text = with_daemon(f'state = "{DSN}"\nstate_password_env = "T_DB_PASSWORD"\nlease_ttl = "30s"')
    config = load_config(write(tmp_path, text), ADAPTERS)
    assert config.daemon.database == DSN
    password = config.daemon.database_password
    assert password is not None and password.get_secret_value() == "secret-db-password"
    assert config.daemon.lease_ttl == 30
    assert "secret-db-password" not in repr(config)
    assert describe(DSN) == "stocksync@db.example.com:5432/stocksync"


def test_a_bare_dsn_is_described_from_libpqs_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    assert describe("postgresql://") == "localhost/"
    monkeypatch.setenv("PGHOST", "db-rw")
    monkeypatch.setenv("PGUSER", "app")
    monkeypatch.setenv("PGPASSWORD", "hunter2")
    assert describe("postgresql://") == "app@db-rw/app"
    assert describe("postgresql:///stocksync?port=6432") == "app@db-rw:6432/stocksync"


def test_a_file_state_keeps_sqlite_and_the_lease_ttl_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), ADAPTERS)
    assert config.daemon.database is None
    assert config.daemon.lease_ttl == 15


@pytest.mark.parametrize(
    ("lines", "key", "problem"),
    [
        ('state = "postgresql://u:hunter2@db/x"', "daemon", "must not contain the password"),
        ('state = "postgresql://db/x?password=hunter2"', "daemon", "must not contain the pass"),
        ('state = "postgresql://db/x?nonsense=1"', "daemon", "not a valid PostgreSQL"),
        ('state = "s.db"\nstate_password_env = "T_DB_PASSWORD"', "daemon", "need a postgresql"),
        (f'state = "{DSN}"\nlease_ttl = "1s"', "daemon.lease_ttl", "at least 3s"),
        ('database = "postgresql://db/x"', "daemon", "unknown key database"),
    ],
)
def test_database_faults_are_reported_without_the_password(
    tmp_path: Path, lines: str, key: str, problem: str
) -> None:
    found = faults(tmp_path, with_daemon(lines))
    assert problem in found[key]
    assert "hunter2" not in str(found)


def test_one_off_commands_that_write_the_state_refuse_a_dsn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, with_daemon(f'state = "{DSN}"'))
    assert main(["check-config", "-c", str(path)]) == 0
    assert main(["once", "-c", str(path)]) == 2
    assert "works on a SQLite state" in capsys.readouterr().err
