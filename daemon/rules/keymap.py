"""A channel's `key_map` (SKU -> item key), kept compact.

A Marketplacer merchant with a million SKUs maps a million of them to variant ids. As a dict of
strings that costs about 170 MB per channel (two objects and a slot per row), more than the rest
of the daemon together at that size, and fingerprinting the rules made a sorted copy of it at
every start. Here the rows live in two bytes blobs sorted by SKU with offset arrays beside them:
about the size of the file, found by binary search (a few microseconds, paid only when a record
is planned). Channels that name the same file share one map (`KeyMapCache`).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["KeyMap", "KeyMapCache", "load_key_map"]

_SEPARATOR = b"\x00"


class _Column:
    """Row `i` of a blob cut at `offsets`, as a sequence `bisect` can search."""

    __slots__ = ("_blob", "_offsets")

    def __init__(self, blob: bytes, offsets: array[int]) -> None:
        self._blob = blob
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> bytes:
        return self._blob[self._offsets[index] : self._offsets[index + 1]]


class KeyMap(Mapping[str, str]):
    """An immutable SKU -> key mapping; `digest` identifies its content for the plan
    fingerprint without walking it again."""

    __slots__ = ("_keys", "_skus", "digest")

    def __init__(self, rows: list[bytes]) -> None:
        """`rows` are `sku NUL key`, UTF-8, sorted, each SKU once (see `load_key_map`)."""
        skus, keys = bytearray(), bytearray()
        sku_offsets, key_offsets = array("Q", [0]), array("Q", [0])
        digest = hashlib.sha256(b"stocksync key map v1")
        for row in rows:
            sku, key = row.split(_SEPARATOR, 1)
            skus += sku
            keys += key
            sku_offsets.append(len(skus))
            key_offsets.append(len(keys))
            digest.update(len(row).to_bytes(4, "big"))
            digest.update(row)
        self._skus = _Column(bytes(skus), sku_offsets)
        self._keys = _Column(bytes(keys), key_offsets)
        self.digest = digest.hexdigest()

    def _index(self, sku: str) -> int | None:
        wanted = sku.encode("utf-8", "surrogatepass")
        index = bisect_left(self._skus, wanted)
        if index < len(self._skus) and self._skus[index] == wanted:
            return index
        return None

    def __getitem__(self, sku: str) -> str:
        index = self._index(sku)
        if index is None:
            raise KeyError(sku)
        return self._keys[index].decode()

    def get(self, sku: str, default: str | None = None) -> str | None:  # type: ignore[override]
        index = self._index(sku)
        return default if index is None else self._keys[index].decode()

    def __contains__(self, sku: object) -> bool:
        return isinstance(sku, str) and self._index(sku) is not None

    def __iter__(self) -> Iterator[str]:
        for index in range(len(self._skus)):
            yield self._skus[index].decode()

    def __len__(self) -> int:
        return len(self._skus)

    def __repr__(self) -> str:
        return f"KeyMap({len(self)} rows, {self.digest[:12]})"


def load_key_map(path: Path) -> KeyMap:
    """`sku,key` rows, an optional header; a ValueError naming the line of any bad row."""
    rows: list[bytes] = []
    number = 0
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if not row or (number == 1 and [c.strip().lower() for c in row] == ["sku", "key"]):
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise ValueError(f"{path}:{number}: want two non-empty columns, sku,key")
                sku, key = row[0].strip(), row[1].strip()
                if "\x00" in sku:
                    raise ValueError(f"{path}:{number}: a NUL character in the sku")
                rows.append(sku.encode() + _SEPARATOR + key.encode())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text") from exc
    except csv.Error as exc:
        # A field over csv's limit (128 KiB), a NUL byte, a quote left open.
        raise ValueError(f"{path}:{number + 1}: not a readable CSV row ({exc})") from exc
    # NUL sorts before every other byte, so `sku NUL key` rows sort as their SKUs do.
    rows.sort()
    for before, after in itertools.pairwise(rows):
        repeated = after.split(_SEPARATOR, 1)[0]
        if before.split(_SEPARATOR, 1)[0] == repeated:
            raise ValueError(_twice(path, repeated.decode()))
    return KeyMap(rows)


def _twice(path: Path, sku: str) -> str:
    """The fault for a SKU mapped twice, naming the line of its second row (found again: the
    rows were sorted, so their lines are gone; this runs only on a faulty file)."""
    seen = 0
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if len(row) == 2 and row[0].strip() == sku:
                seen += 1
                if seen == 2:
                    return f"{path}:{number}: sku {sku!r} is mapped twice"
    return f"{path}: sku {sku!r} is mapped twice"  # pragma: no cover - the file changed


class KeyMapCache:
    """One config load's key maps by file: channels naming one file share one map."""

    def __init__(self) -> None:
        self._maps: dict[Path, KeyMap] = {}

    def load(self, path: Path) -> KeyMap:
        resolved = path.resolve()
        found = self._maps.get(resolved)
        if found is None:
            found = self._maps[resolved] = load_key_map(path)
        return found
