"""A digest of everything in a config that decides what is pushed where, and of nothing else.

Replicas of one deployment publish it (`daemon.replicas.configs`) so that one whose config differs
from the leader's can say so, and so that a replica with an older config never takes the lease
back from a newer one. It covers:

- keyCRM as the source (`keycrm.base_url`: which account's offers are read);
- every channel: its name, its type, its adapter's settings (where it pushes: `base_url`, store
  codes, seller maps, ...) and its planning rules (the plan's own fingerprint: keys, key maps by
  content, warehouses, reserve, buffer, cap, price, live threshold).

It leaves out what does not change what is pushed where: the listen address, log settings,
the state, timings and limits (`debounce`, `rate_limit`, `concurrency`, timeouts). And it never
takes in a secret, not even hashed: a digest of a short token could be guessed back from the
database. A secret rotated, or named through another variable, leaves the fingerprint as it was.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import BaseModel, SecretStr
from pydantic_core import to_jsonable_python

from daemon.config.settings import Config
from daemon.rules.plan import fingerprint as rules_fingerprint

__all__ = ["VERSION", "config_fingerprint", "short"]

#: bump when the fingerprint takes in something else, so every replica gets a new one at once
VERSION = 1


def _public(model: BaseModel) -> dict[str, Any]:
    """A model's fields without its secrets (resolved `SecretStr` values), as JSON values."""
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            continue
        out[name] = _public(value) if isinstance(value, BaseModel) else to_jsonable_python(value)
    return out


def config_fingerprint(config: Config) -> str:
    """The sha256 (hex) of what this config pushes where; equal configs give equal digests."""
    data = {
        "version": VERSION,
        "keycrm": config.keycrm.base_url,
        "rules": rules_fingerprint({c.name: c.rules for c in config.channels}),
        "channels": {
            c.name: {"type": c.type, "options": _public(c.options)} for c in config.channels
        },
    }
    text = orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(text).hexdigest()


def short(fingerprint: str | None) -> str | None:
    """The first 12 hex digits: enough to tell configs apart in `/status` and the logs."""
    return None if fingerprint is None else fingerprint[:12]
