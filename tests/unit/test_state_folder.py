"""A merchants' state folder: made when missing (where it can be), refused when it is a file or
cannot be written."""

from __future__ import annotations

from pathlib import Path

from daemon.shell.preflight import check_state_folder


def test_a_state_folder_may_be_missing_but_must_be_writable(tmp_path: Path) -> None:
    assert check_state_folder(tmp_path / "state" / "merchants") is None
    (tmp_path / "file").write_text("")
    assert "is a file" in (check_state_folder(tmp_path / "file") or "")
    assert "cannot write in /proc" in (check_state_folder(Path("/proc/stocksync/state")) or "")
    assert "not a usable" in (check_state_folder(tmp_path / "a\0b") or "")
