"""The machine checks of check-config on values no file system or resolver takes."""

from __future__ import annotations

from pathlib import Path

from daemon.shell.preflight import check_listen, check_state


def test_a_state_path_with_a_nul_byte_is_a_fault_not_a_crash() -> None:
    assert "is not a usable file path" in (check_state(Path("/tmp/a\0b.db")) or "")


def test_a_host_name_no_resolver_takes_is_a_fault_not_a_crash() -> None:
    assert "is not a valid host name" in (check_listen("a" * 70 + ".example:80") or "")
    assert "not host:port" in (check_listen("no-port") or "")
    assert check_listen("127.0.0.1:0") is None
