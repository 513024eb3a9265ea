"""A large keyCRM page decoded offer by offer means exactly what orjson would make of it whole.

Every document, valid or damaged at any byte, is decoded both ways: split (as a page above
`SPLIT_ABOVE` is) and by `orjson.loads`. Either both refuse it, or the split one, its offers
decoded, is the same value; and the page parsers make the same page (or the same refusal) of it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.keycrm import page_split
from daemon.keycrm.page_split import NotJson, RawOffer, decode_page
from daemon.keycrm.payloads import MalformedPage, parse_catalog_page, parse_stock_page
from tests.unit.test_properties import PROPERTY, anything, page


def split(body: bytes) -> Any:
    """`decode_page` as it treats a large page, its offers decoded: NotJson if not JSON."""
    value = decode_page(body)
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value["data"] = [o.decode() if isinstance(o, RawOffer) else o for o in value["data"]]
    return value


def whole(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotJson from None


def outcome(decode: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(body)
    except NotJson:
        return "not json", None


def parsed(parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except MalformedPage as exc:
        return str(exc).split(" ", 1)[0]  # the same kind of refusal, not the same index text


def texts(document: Any) -> st.SearchStrategy[bytes]:
    """The document as keyCRM or a proxy might lay it out, then maybe one byte damaged."""
    compact = json.dumps(document, separators=(",", ":")).encode()  # orjson: 64-bit ints only
    spaced = json.dumps(document, indent=1, ensure_ascii=False).encode()
    laid = st.sampled_from([compact, spaced, b" \n" + compact + b"\r\n\t"])

    def damage(text: bytes, where: int, byte: int, how: int) -> bytes:
        at = where % (len(text) + 1)
        if how == 0:
            return text
        if how == 1:
            return text[:at] + text[at + 1 :]  # a byte lost
        return text[:at] + bytes([byte]) + text[at + 1 :]  # a byte replaced

    return st.builds(damage, laid, st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 2))


@pytest.fixture(autouse=True)
def _always_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_split, "SPLIT_ABOVE", -1)


@PROPERTY
@given(body=st.one_of(anything, page, page).flatmap(texts))
def test_a_split_page_is_what_orjson_makes_of_it(body: bytes) -> None:
    assert outcome(split, body) == outcome(whole, body)


@PROPERTY
@given(body=page.flatmap(texts))
def test_the_page_parsers_make_the_same_page_of_it(body: bytes) -> None:
    try:
        value = decode_page(body)
        expected = whole(body)
    except NotJson:
        return  # both refused: the test above holds that
    for parse in (parse_stock_page, parse_catalog_page):
        assert parsed(parse, value) == parsed(parse, expected)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [{"id": 1}, {"id": NaN}], "total": 2}',  # an offer orjson refuses
        b'{"data": [{"id": 1}], "total": Infinity}',  # a field orjson refuses
        b'{"data": [{"id": 1},], "total": 1}',  # a trailing comma
        b'{"data": [{"id": 1}], "total": 1,}',
        b'{"data": [{"id": 1}], "total": 1} {}',  # text after the document
        b'{"data": [{"id": 1}]',  # cut short
        b'{"data": [' + b"[" * 5000 + b"]" * 5000 + b"]}",  # deeper than either will go
        b'{"data": [{"id": 1}], "total": "\xff"}',  # not UTF-8
        b"",
    ],
)
def test_what_orjson_refuses_a_split_page_refuses(body: bytes) -> None:
    assert outcome(split, body) == ("not json", None)
    assert outcome(whole, body) == ("not json", None)
