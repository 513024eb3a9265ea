"""`stocksync history --merchant NAME` on PostgreSQL: that merchant's schema, and no other's."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from daemon.commands.cli import main
from tests.postgres.test_ha import url_dsn
from tests.postgres.test_history import build, history


def test_history_reads_the_merchants_own_schema(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "acme.db"
    anyio.run(build, path, time.time())
    assert main(["migrate-state", "--from", str(path), "--to", pg_dsn, "--merchant", "acme"]) == 0
    (tmp_path / "merchants").mkdir()
    for name in ("acme", "bolt"):  # `history` reads only the names of the merchant files
        (tmp_path / "merchants" / f"{name}.toml").write_text("", encoding="utf-8")
    config = tmp_path / "main.toml"
    config.write_text(f'[daemon]\nmerchants = "merchants"\nstate = "{url_dsn(pg_dsn)}"\n')
    c = ("-c", str(config))

    code, out, err = history(capsys, *c, "--merchant", "acme", "S1", "--limit", "0")
    assert (code, err) == (0, "")
    assert out == history(capsys, "S1", "--state", str(path), "--limit", "0")[1]
    code, out, err = history(capsys, *c, "--merchant", "bolt", "S1")
    assert code == 1 and out == ""
    assert "holds no stocksync state of merchant bolt" in err
    code, _, err = history(capsys, *c, "S1")
    assert code == 2 and err.startswith("--merchant: required: ") and "(acme, bolt)" in err
