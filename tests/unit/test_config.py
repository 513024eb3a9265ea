"""Config validation: every fault at once, each named by its key; `check-config` exits 2."""

from pathlib import Path

import pytest

from adapters import ADAPTERS
from daemon.commands.cli import main
from daemon.config.settings import load_config
from daemon.core.errors import ConfigError

GOOD = """
[daemon]
state = "state.db"

[keycrm]
api_key_env = "T_KEY"

[[channel]]
name = "pos"
type = "inventory_api"
base_url = "https://pos.example.com"
token_env = "T_POS"
store = "3"
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_KEY", "secret-key-value")
    monkeypatch.setenv("T_POS", "secret-pos-value")
    monkeypatch.delenv("STOCKSYNC_CONFIG", raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def faults(tmp_path: Path, text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), ADAPTERS)
    return dict(caught.value.faults)


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), ADAPTERS)
    assert config.daemon.state == tmp_path / "state.db"
    assert config.daemon.listen == "127.0.0.1:9108"
    assert config.keycrm.requests_per_minute == 60
    assert config.keycrm.poll_interval == 300
    assert config.sync.debounce == 2
    (channel,) = config.channels
    assert channel.rate == 10 and channel.concurrency == 4 and channel.batch_size == 1
    assert "secret" not in repr(config)


def test_every_fault_is_reported_with_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("T_POS")
    text = GOOD.replace(
        'state = "state.db"', 'state = "state.db"\nshutdown_timeout = "soon"\ncolour = 1'
    )
    text = text.replace(
        'store = "3"', 'store = "3"\nrate_limit = "5/x"\nconcurrency = 0\nbuffer = -1'
    )
    text += '\n[[channel]]\nname = "x"\ntype = "carrier-pigeon"\n'
    found = faults(tmp_path, text)
    assert "not a duration" in found["daemon.shutdown_timeout"]
    assert found["daemon.colour"] == "unknown key"
    assert "not a rate" in found['channel "pos".rate_limit']
    assert "greater than 0" in found['channel "pos".concurrency']
    assert "greater than or equal to 0" in found['channel "pos".buffer']
    assert "T_POS is not set" in found['channel "pos".token_env']
    assert "unknown type 'carrier-pigeon'" in found['channel "x".type']


def test_secrets_in_files_and_unreadable_key_maps(tmp_path: Path) -> None:
    text = GOOD.replace('api_key_env = "T_KEY"', 'api_key_file = "missing-key"')
    text = text.replace('store = "3"', 'store = "3"')
    text = text.replace('name = "pos"', 'name = "pos"\nkey_map = "nope.csv"')
    found = faults(tmp_path, text)
    assert "cannot read" in found["keycrm.api_key_file"]
    assert "cannot read" in found['channel "pos".key_map']


def test_inventory_api_needs_store_or_store_map_and_a_known_match(tmp_path: Path) -> None:
    found = faults(tmp_path, GOOD.replace('store = "3"', 'match = "ean"'))
    assert "match" in " ".join(found) or any("match" in v for v in found.values())
    found = faults(tmp_path, GOOD.replace('store = "3"', ""))
    assert any("store_map" in v for v in found.values())


def test_no_channel_and_bad_toml(tmp_path: Path) -> None:
    assert "at least one" in faults(tmp_path, '[keycrm]\napi_key_env = "T_KEY"\n')["channel"]
    assert "not valid TOML" in faults(tmp_path, "[daemon\n")["config"]


def test_check_config_exit_codes_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace('state = "state.db"', 'state = "state.db"\nlisten = "127.0.0.1:0"')
    good = write(tmp_path, text)
    assert main(["check-config", "-c", str(good)]) == 0
    bad = write(tmp_path, text.replace('"3"', '"3"\nrate_limit = "fast"'))
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        'channel "pos".rate_limit: \'fast\' is not a rate; write e.g. "5/s" or "600/m"'
    ]


def test_config_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD.replace('state = "state.db"', 'state = "state.db"\nlisten = "127.0.0.1:0"')
    monkeypatch.setenv("STOCKSYNC_CONFIG", str(write(tmp_path, text)))
    assert main(["check-config"]) == 0
    monkeypatch.delenv("STOCKSYNC_CONFIG")
    assert main(["check-config"]) == 2


def test_the_example_config_in_deploy_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[2] / "deploy" / "stocksync.example.toml"
    for name in (
        "KEYCRM_API_KEY",
        "KEYCRM_WEBHOOK_TOKEN",
        "STOCKSYNC_ADMIN_TOKEN",
        "POS_API_TOKEN",
        "KLUMP_SECRET_KEY",
        "MARKETPLACER_API_KEY",
        "ORDERGROOVE_HASH_KEY",
    ):
        monkeypatch.setenv(name, "x" * 16)
    config = load_config(example, ADAPTERS)
    assert [c.type for c in config.channels] == [
        "inventory_api",
        "klump",
        "marketplacer",
        "ordergroove",
    ]


def test_channel_specific_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_MP", "x" * 12)
    text = (
        GOOD
        + """
[[channel]]
name = "mp"
type = "marketplacer"
base_url = "https://shop.example.com"
api_key_env = "T_MP"
seller_map = { "1" = 11 }

[[channel]]
name = "kl"
type = "klump"
secret_key_env = "T_UNSET_KLUMP"
batch_size = 5
"""
    )
    found = faults(tmp_path, text)
    assert "needs key or key_map" in found['channel "mp".key']
    assert "seller_map needs api" in found['channel "mp"']
    assert "T_UNSET_KLUMP is not set" in found['channel "kl".secret_key_env']
    assert "at most 1" in found['channel "kl".batch_size']


def test_channel_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_MP", "x" * 12)
    monkeypatch.setenv("T_OG", "y" * 12)
    text = (
        GOOD
        + """
[[channel]]
name = "mp"
type = "marketplacer"
base_url = "https://shop.example.com"
api_key_env = "T_MP"
key = "{prop[Variant]}"

[[channel]]
name = "og"
type = "ordergroove"
public_id = "p"
sig_field = "u"
hash_key_env = "T_OG"
"""
    )
    config = load_config(write(tmp_path, text), ADAPTERS)
    _, mp, og = config.channels
    assert (mp.batch_size, mp.rate) == (25, 50)
    assert (og.batch_size, og.rate, og.rules.live_threshold) == (100, 10, 0)


def test_reassert_interval_is_an_optional_duration(tmp_path: Path) -> None:
    (channel,) = load_config(write(tmp_path, GOOD), ADAPTERS).channels
    assert channel.reassert_interval is None
    every = GOOD + 'reassert_interval = "6h"\n'
    (channel,) = load_config(write(tmp_path, every), ADAPTERS).channels
    assert channel.reassert_interval == 6 * 3600
    for bad, problem in (('"0s"', "longer than zero"), ("6", "with a unit"), ('"often"', "not a")):
        found = faults(tmp_path, GOOD + f"reassert_interval = {bad}\n")
        assert problem in found['channel "pos".reassert_interval'], bad


def test_the_order_feed_is_on_every_15s_and_a_bare_zero_turns_it_off(tmp_path: Path) -> None:
    keycrm = load_config(write(tmp_path, GOOD), ADAPTERS).keycrm
    assert (keycrm.order_feed_interval, keycrm.order_feed_overlap) == (15, 120)
    for off in ('"0"', '"0s"'):
        text = GOOD.replace(
            'api_key_env = "T_KEY"', f'api_key_env = "T_KEY"\norder_feed_interval = {off}'
        )
        assert load_config(write(tmp_path, text), ADAPTERS).keycrm.order_feed_interval == 0
    text = GOOD.replace('api_key_env = "T_KEY"', 'api_key_env = "T_KEY"\norder_feed_interval = "5"')
    assert "is not a duration" in faults(tmp_path, text)["keycrm.order_feed_interval"]


def test_durations_and_rates_within_sane_bounds(tmp_path: Path) -> None:
    text = GOOD.replace(
        'api_key_env = "T_KEY"',
        'api_key_env = "T_KEY"\npoll_interval = "' + "9" * 400 + 's"\ntimeout = "2h"',
    )
    text = text.replace('store = "3"', 'store = "3"\nrate_limit = "1000000/s"\ntimeout = "0.5h"')
    found = faults(tmp_path, text)
    assert "is too long; at most 3650d" in found["keycrm.poll_interval"]
    assert len(found["keycrm.poll_interval"]) < 100
    assert found["keycrm.timeout"] == "must be at most 1h"
    assert "too fast" in found['channel "pos".rate_limit']
    assert 'channel "pos".timeout' not in found
    slow = faults(tmp_path, GOOD.replace('store = "3"', 'store = "3"\nrate_limit = "0.1/h"'))
    assert "too slow" in slow['channel "pos".rate_limit']


def test_a_duplicate_name_is_reported_with_every_other_fault(tmp_path: Path) -> None:
    text = GOOD + GOOD[GOOD.index("[[channel]]") :].replace('store = "3"', "buffer = -1")
    text += (
        '\n[[channel]]\nname = "kl"\ntype = "klump"\nsecret_key_env = "T_KEY"\nrate_limit = "x"\n'
    )
    found = faults(tmp_path, text)
    assert found["channel[1].name"] == "'pos' is also the name of channel[0]"
    assert "greater than or equal to 0" in found["channel[1].buffer"]
    assert "not a rate" in found['channel "kl".rate_limit']


def test_a_key_map_with_a_huge_field_is_a_clear_fault(tmp_path: Path) -> None:
    (tmp_path / "map.csv").write_text("sku,key\nA," + "k" * 200_000 + "\n", encoding="utf-8")
    text = GOOD.replace('name = "pos"', 'name = "pos"\nkey_map = "map.csv"')
    problem = faults(tmp_path, text)['channel "pos".key_map']
    assert "map.csv:2: not a readable CSV row (field larger than field limit" in problem


def test_a_file_nested_too_deeply_is_a_fault_not_a_crash(tmp_path: Path) -> None:
    found = faults(tmp_path, "a = " + "[" * 50_000 + "]" * 50_000)
    assert "nests arrays or tables too deeply" in found["config"]
