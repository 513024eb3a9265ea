"""Secrets come from environment variables or files, never from the config file itself.

Config fields ending in `_env` name a variable; fields ending in `_file` name a file (relative
names are looked up in systemd's `$CREDENTIALS_DIRECTORY` first). Both resolve at load time, so
`check-config` reports an unset variable, and the value travels as a `SecretStr` whose repr is
masked: it cannot leak through a log line, an error message or `/status` by accident.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

__all__ = [
    "EnvSecret",
    "FileSecret",
    "pick",
    "read_env_secret",
    "read_file_secret",
    "secrets_named_in",
]

MAX_SECRET_BYTES = 64 * 1024


def read_env_secret(name: object) -> SecretStr:
    """The value of the environment variable `name`; a ValueError if unset or empty."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("must name an environment variable")
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"environment variable {name} is not set")
    if not value.strip():
        raise ValueError(f"environment variable {name} is empty")
    return SecretStr(value.strip())


def read_file_secret(path: object) -> SecretStr:
    """The stripped content of a secret file; a ValueError if unreadable or empty."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError("must name a file")
    candidate = Path(path)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if not candidate.is_absolute() and credentials and (Path(credentials) / candidate).exists():
        candidate = Path(credentials) / candidate
    try:
        with candidate.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)  # never all of /dev/zero
        if len(raw) > MAX_SECRET_BYTES:
            raise ValueError(f"{candidate} is larger than 64 KiB: not a secret")
        value = raw.decode("utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {candidate}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{candidate} is not UTF-8 text") from exc
    if not value:
        raise ValueError(f"{candidate} is empty")
    return SecretStr(value)


EnvSecret = Annotated[SecretStr, BeforeValidator(read_env_secret)]
FileSecret = Annotated[SecretStr, BeforeValidator(read_file_secret)]


def pick(env: SecretStr | None, file: SecretStr | None, what: str, *, required: bool) -> None:
    """Check that at most one (or, if required, exactly one) of the two sources is given."""
    if env is not None and file is not None:
        raise ValueError(f"give {what}_env or {what}_file, not both")
    if required and env is None and file is None:
        raise ValueError(f"{what}_env or {what}_file is required")


def secrets_named_in(path: Path) -> list[str]:
    """Every secret the file names that this shell can read, without validating anything else.

    For the commands that do not load the whole config (`status`, `resync`, `history`): they
    still scrub what they print of any secret they can know of. Unreadable ones are skipped.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                reader: Callable[[object], SecretStr]
                if isinstance(key, str) and isinstance(value, str) and key.endswith("_env"):
                    reader = read_env_secret
                elif isinstance(key, str) and isinstance(value, str) and key.endswith("_file"):
                    reader = read_file_secret
                else:
                    walk(value)
                    continue
                try:
                    found.append(reader(value).get_secret_value())
                except ValueError:
                    continue

    walk(document)
    return found
