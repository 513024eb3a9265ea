"""Which live replica should lead each merchant: a pure function every replica computes alike.

Rendezvous (highest random weight) hashing: every (merchant, replica) pair gets a weight from a
hash both of them name, the same on every replica and every run. A merchant goes to the replica
that weighs most for it, so a replica that joins takes only the merchants it now weighs most
for, and one that leaves gives up only its own.

Hashing alone balances only roughly (4 merchants on 2 replicas may hash 3 and 1), so a fair-share
cap bounds it: `M mod R` replicas lead `ceil(M / R)` merchants and the others `floor(M / R)`,
so the shares never differ by more than one. The pairs are taken heaviest first, each given
unless its merchant already has a replica or its replica is full. A merchant thus still goes
to its heaviest replica unless that one filled up with merchants that weigh more for it, and a
join or a leave moves little more than its share.

`current` (who leads each merchant now) makes it sticky: a merchant stays with its live leader
while that leader is within its share, before any pair is weighed, so a replica that wakes
from a pause or restarts does not take back what another now leads in its fair share, and a
join moves only what the caps free (about 1/R of the merchants, to the new replica).

`eligible` narrows a merchant to some replicas (those whose config for it is the newest live
one, `daemon.replicas.configs`); a merchant none of whose eligible replicas has room goes to
the heaviest of them anyway (the cap is a goal, never a reason to leave a merchant unled).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping

__all__ = ["assign", "weight"]


@functools.lru_cache(maxsize=1 << 16)  # the share-out runs again on every change of leader
def weight(merchant: str, replica: str) -> int:
    """The pair's rendezvous weight: a stable 64-bit hash (never Python's salted `hash`)."""
    digest = hashlib.blake2b(merchant.encode() + b"\x00" + replica.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(
    merchants: Iterable[str],
    replicas: Iterable[str],
    eligible: Mapping[str, Collection[str]] | None = None,
    current: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Owner per merchant; empty when no replica is live. Deterministic in its inputs (their
    order does not matter)."""
    names = sorted(set(merchants))
    members = sorted(set(replicas))
    if not names or not members:
        return {}
    floor, extra = divmod(len(names), len(members))
    load = dict.fromkeys(members, 0)
    full = 0  # replicas given floor + 1 merchants: at most `extra` of them

    def candidates(merchant: str) -> list[str]:
        allowed = None if eligible is None else eligible.get(merchant)
        chosen = [r for r in members if allowed is None or r in allowed]
        return chosen or members  # none eligible is live: any replica rather than none

    owner: dict[str, str] = {}

    def give(pairs: list[tuple[int, str, str]]) -> None:
        nonlocal full
        for _, merchant, replica in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
            if merchant in owner:
                continue
            if load[replica] < floor or (load[replica] == floor and full < extra):
                if load[replica] == floor:
                    full += 1
                load[replica] += 1
                owner[merchant] = replica

    if current:  # leaders keep what fits in their share, the heaviest first
        give([(weight(m, r), m, r) for m in names if (r := current.get(m)) in candidates(m)])
    give([(weight(m, r), m, r) for m in names if m not in owner for r in candidates(m)])
    for merchant in names:  # only with `eligible`: every eligible replica was full
        if merchant not in owner:
            best = max(candidates(merchant), key=lambda r: (weight(merchant, r), r))
            owner[merchant] = best
            load[best] += 1
    return owner
