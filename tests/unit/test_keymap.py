"""A channel's key map: the same answers as a dict of its rows, a fraction of a dict's memory,
one copy for channels that name the same file, and a fingerprint that follows its content."""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import ADAPTERS
from daemon.config.settings import load_config
from daemon.rules.keymap import load_key_map
from daemon.rules.plan import fingerprint

#: what a CSV cell can hold once stripped: no NUL, no surrounding blanks, something left
cell = (
    st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), min_size=1
    )
    .map(str.strip)
    .filter(bool)
)


def write_map(path: Path, rows: dict[str, str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["sku", "key"])
        out.writerows(rows.items())
    return path


@settings(max_examples=60, deadline=None)
@given(rows=st.dictionaries(cell, cell, max_size=40), probes=st.lists(cell, max_size=20))
def test_a_key_map_answers_as_a_dict_of_its_rows(
    tmp_path_factory: pytest.TempPathFactory, rows: dict[str, str], probes: list[str]
) -> None:
    path = write_map(tmp_path_factory.mktemp("map") / "map.csv", rows)
    mapped = load_key_map(path)
    assert len(mapped) == len(rows)
    assert dict(mapped) == rows
    for sku in [*rows, *probes, ""]:
        assert mapped.get(sku) == rows.get(sku)
        assert (sku in mapped) == (sku in rows)


def test_a_sku_mapped_twice_names_the_line_of_its_second_row(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text("sku,key\nB,1\nA,2\nC,3\nA,4\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"map.csv:5: sku 'A' is mapped twice"):
        load_key_map(path)


def test_a_key_map_costs_about_its_file_not_a_dict_of_its_rows(tmp_path: Path) -> None:
    rows = {f"SKU-{n:07d}": f"VmFyaWFudC0{n:09d}" for n in range(100_000)}
    path = write_map(tmp_path / "map.csv", rows)
    tracemalloc.start()
    try:
        mapped = load_key_map(path)
        kept, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mapped.get("SKU-0054321") == "VmFyaWFudC0000054321"
    # The file is ~3.3 MB; a dict of its rows held ~17 MB (170 B a row).
    assert kept < 1.6 * path.stat().st_size


CONFIG = """
[daemon]
state = "state.db"

[keycrm]
api_key_env = "T_KEY"

[[channel]]
name = "mp-one"
type = "marketplacer"
base_url = "https://mp.example.com"
api_key_env = "T_MP"
key_map = "variants.csv"

[[channel]]
name = "mp-two"
type = "marketplacer"
base_url = "https://mp2.example.com"
api_key_env = "T_MP"
key_map = "./variants.csv"
"""


def test_channels_naming_one_file_share_one_map_and_its_content_is_fingerprinted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_KEY", "k")
    monkeypatch.setenv("T_MP", "m")
    write_map(tmp_path / "variants.csv", {"A": "VmFyaWFudC0x", "B": "VmFyaWFudC0y"})
    (tmp_path / "c.toml").write_text(CONFIG, encoding="utf-8")
    config = load_config(tmp_path / "c.toml", ADAPTERS)
    one, two = (channel.rules for channel in config.channels)
    assert one.key_map is two.key_map
    before = fingerprint({c.name: c.rules for c in config.channels})
    assert before == fingerprint(
        {c.name: c.rules for c in load_config(tmp_path / "c.toml", ADAPTERS).channels}
    )
    write_map(tmp_path / "variants.csv", {"A": "VmFyaWFudC0x", "B": "VmFyaWFudC0z"})
    after = load_config(tmp_path / "c.toml", ADAPTERS)
    assert fingerprint({c.name: c.rules for c in after.channels}) != before
