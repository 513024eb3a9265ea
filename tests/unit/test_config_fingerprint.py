"""The config fingerprint replicas compare: it follows what is pushed where, ignores what is
not (listen address, logs, timings), and never takes in a secret."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from adapters import ADAPTERS
from daemon.config.fingerprint import config_fingerprint
from daemon.config.settings import load_config

BASE = """
[daemon]
state = "state.db"
listen = "127.0.0.1:9108"
log_level = "info"
admin_token_env = "T_ADMIN"

[keycrm]
base_url = "https://openapi.keycrm.app/v1"
api_key_env = "T_KEY"

[sync]
debounce = "2s"

[[channel]]
name = "pos"
type = "inventory_api"
base_url = "https://pos.example.com"
token_env = "T_POS"
store = "S1"
buffer = 1
rate_limit = "10/s"
"""

MARKETPLACER = """
[[channel]]
name = "mp"
type = "marketplacer"
base_url = "https://mp.example.com"
api_key_env = "T_MP"
key = "{sku}"
"""

SECRETS = {"T_ADMIN": "admin-secret-1", "T_KEY": "keycrm-secret-1", "T_POS": "pos-secret-1",
           "T_MP": "mp-secret-1"}  # fmt: skip


@pytest.fixture
def fingerprint_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)

    def of(text: str) -> str:
        path = tmp_path / "c.toml"
        path.write_text(text, encoding="utf-8")
        return config_fingerprint(load_config(path, ADAPTERS))

    return of


def test_what_is_pushed_where_changes_the_fingerprint(
    fingerprint_of: Callable[[str], str],
) -> None:
    base = fingerprint_of(BASE)
    assert fingerprint_of(BASE) == base  # equal configs, equal fingerprints
    changed = {
        "a channel added": BASE + MARKETPLACER,
        "a rule": BASE.replace("buffer = 1", "buffer = 2"),
        "where a channel pushes": BASE.replace("pos.example.com", "pos2.example.com"),
        "an adapter setting": BASE.replace('store = "S1"', 'store = "S2"'),
        "the keyCRM account": BASE.replace("openapi.keycrm.app", "keycrm.example.com"),
        "a channel renamed": BASE.replace('name = "pos"', 'name = "shop"'),
    }
    prints = {what: fingerprint_of(text) for what, text in changed.items()}
    assert all(p != base for p in prints.values()), prints
    assert len(set(prints.values())) == len(prints)


def test_the_listener_logs_timings_and_secrets_leave_it_alone(
    fingerprint_of: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = fingerprint_of(BASE)
    same = (
        BASE.replace("127.0.0.1:9108", "0.0.0.0:9200")
        .replace('log_level = "info"', 'log_level = "debug"')
        .replace('debounce = "2s"', 'debounce = "5s"')
        .replace('rate_limit = "10/s"', 'rate_limit = "20/s"')
        .replace('"state.db"', '"other.db"')
    )
    assert fingerprint_of(same) == base
    for name, value in SECRETS.items():  # every secret rotated
        monkeypatch.setenv(name, value.replace("1", "2"))
    assert fingerprint_of(BASE) == base
    monkeypatch.setenv("T_POS_NEW", "pos-secret-1")  # the same secret through another variable
    assert fingerprint_of(BASE.replace('"T_POS"', '"T_POS_NEW"')) == base
