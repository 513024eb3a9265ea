"""A large keyCRM page decoded offer by offer, so its parse never holds the whole page twice.

`orjson.loads` of a whole page builds every value of it at once, and its working memory comes
on top: for a page of many small values (warehouse rows, properties) about 25 times the page's
size at the peak. A page above `SPLIT_ABOVE` bytes is walked instead: the envelope's fields are
decoded one by one and each offer of `data` is kept as its span of the text, decoded only when
the page parser reaches it. The peak is then the text, the records parsed so far and one
offer's values. Pages of ordinary size (a few KiB) are decoded whole, which is faster.

orjson stays the judge of what is JSON: the standard library's scanner only finds where each
value ends, and every value (each key, each field, each offer) is decoded by orjson from its
span, so a page is accepted or refused as a whole-body `orjson.loads` would (tests hold the two
to the same answers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["SPLIT_ABOVE", "NotJson", "RawOffer", "decode_page"]

#: bytes: a page above this is decoded offer by offer (ordinary pages are a few KiB)
SPLIT_ABOVE = 256 * 1024

_SPACE = re.compile(r"[ \t\n\r]*")
_SCAN = json.JSONDecoder()  # finds where a value ends; its result is thrown away


class NotJson(ValueError):
    """The body is not a JSON document (what orjson would refuse)."""


@dataclass(frozen=True, slots=True)
class RawOffer:
    """One offer of a split page: its span of the page's text, not yet decoded."""

    text: str
    start: int
    end: int

    def decode(self) -> Any:
        """The offer's value, as orjson reads it; `NotJson` if it is not JSON."""
        return _loads(self.text[self.start : self.end])


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise NotJson from None


def decode_page(body: bytes) -> Any:
    """The page's JSON value; above `SPLIT_ABOVE` bytes, a `data` array's items are
    `RawOffer`s. Raises `NotJson` for a body that is not JSON."""
    if len(body) <= SPLIT_ABOVE:
        return _loads_bytes(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NotJson from None
    try:
        return _walk(text)
    except (ValueError, IndexError, RecursionError):  # json.JSONDecodeError is a ValueError
        raise NotJson from None


def _loads_bytes(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotJson from None


def _space(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    assert match is not None  # `*` matches the empty string
    return match.end()


def _value_end(text: str, pos: int) -> int:
    _, end = _SCAN.raw_decode(text, pos)
    return int(end)


def _expect(text: str, pos: int, char: str) -> int:
    if text[pos] != char:
        raise ValueError(f"{char!r} expected")
    return _space(text, pos + 1)


def _walk(text: str) -> Any:
    """The top-level value; an object's `data` array as spans, anything else whole."""
    pos = _space(text, 0)
    if text[pos] != "{":  # not an envelope: decoded whole, the page parser says what is wrong
        return _loads(text)
    fields: dict[str, Any] = {}
    pos = _space(text, pos + 1)
    while text[pos] != "}":
        end = _value_end(text, pos)
        key = _loads(text[pos:end])
        if not isinstance(key, str):
            raise ValueError("a key is not a string")
        pos = _expect(text, _space(text, end), ":")
        if key == "data" and text[pos] == "[":
            fields[key], pos = _offers(text, pos)
        else:
            end = _value_end(text, pos)
            fields[key] = _loads(text[pos:end])
            pos = _space(text, end)
        if text[pos] == ",":
            pos = _space(text, pos + 1)
            if text[pos] == "}":
                raise ValueError("a comma before '}'")
        elif text[pos] != "}":
            raise ValueError("',' or '}' expected")
    if _space(text, pos + 1) != len(text):
        raise ValueError("text after the document")
    return fields


def _offers(text: str, pos: int) -> tuple[list[RawOffer], int]:
    """The spans of an array's items, from its `[`; and where the array ends."""
    offers: list[RawOffer] = []
    pos = _space(text, pos + 1)
    if text[pos] == "]":
        return offers, _space(text, pos + 1)
    while True:
        end = _value_end(text, pos)
        offers.append(RawOffer(text, pos, end))
        pos = _space(text, end)
        if text[pos] == "]":
            return offers, _space(text, pos + 1)
        pos = _expect(text, pos, ",")
