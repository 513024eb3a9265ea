"""TOML configuration to frozen, typed settings, with every fault reported at once.

`load_config` returns a `Config` or raises `ConfigError` whose `faults` are `(key, problem)`
pairs such as `('channel "klump".rate_limit', "'5/x' is not a rate ...")`: `check-config` prints
them one per line, and a SIGHUP reload logs them while the old config keeps running.

This module holds the file's sections and the loader; a `[[channel]]` table is read by
`daemon.config.channels`, and the value types every table is built from are `daemon.config.fields`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from daemon.config.channels import ChannelConfig, load_channels
from daemon.config.dsn import SCHEMES, check_dsn
from daemon.config.fields import (
    BaseUrl,
    Duration,
    DurationOrOff,
    DurationOrZero,
    Settings,
    Timeout,
    one_line,
    validation_faults,
)
from daemon.core.channel import ChannelSpec
from daemon.core.errors import ConfigError
from daemon.core.secrets import EnvSecret, FileSecret, pick

__all__ = [
    "DEFAULT_MERCHANT",
    "MERCHANT_ID",
    "BaseUrl",
    "ChannelConfig",
    "Config",
    "DaemonSettings",
    "Duration",
    "KeycrmSettings",
    "Settings",
    "SyncSettings",
    "load_config",
    "merchant_tables",
    "read_document",
    "secret_values",
]

#: the merchant of a single-merchant file: every existing config, state and dashboard
DEFAULT_MERCHANT = "default"
#: what a merchant file's stem must look like (`acme.toml` -> `acme`)
MERCHANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _lease_ttl(seconds: float) -> float:
    if seconds < 3:
        raise ValueError("must be at least 3s: the lease is renewed every third of it")
    return seconds


def _listen(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string such as 127.0.0.1:9108")
    match = re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\s\[\]]+):(\d{1,5})$", value)
    if match is None or not 0 <= int(match.group(2)) <= 65535:
        shown = repr(value) if len(value) <= 60 else repr(value[:60]) + "..."
        raise ValueError(f"{shown} is not host:port (e.g. 127.0.0.1:9108 or [::1]:9108)")
    return value


class DaemonSettings(Settings):
    """`[daemon]`: the process itself.

    `state` is a SQLite file, or a `postgresql://` DSN for several replicas: a DSN lands in
    `database` (the key itself is not for the file) and `state` keeps its default, unused.
    """

    state: Path = Path("stocksync.db")
    database: str | None = None
    state_password_env: EnvSecret | None = None
    state_password_file: FileSecret | None = None
    lease_ttl: Annotated[Duration, AfterValidator(_lease_ttl)] = 15.0
    listen: Annotated[str, BeforeValidator(_listen)] = "127.0.0.1:9108"
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: Timeout = 20.0
    history_retention: Duration = 30 * 86400.0
    admin_token_env: EnvSecret | None = None
    admin_token_file: FileSecret | None = None
    #: a folder of merchant files (`daemon.config.deployment`); None: this file is the merchant
    merchants: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _state_may_be_a_dsn(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "database" in data:
            raise ValueError("unknown key database (a PostgreSQL DSN goes in state)")
        state = data.get("state")
        if isinstance(state, str) and state.startswith(SCHEMES):
            try:
                check_dsn(state)
            except ValueError as exc:
                raise ValueError(f"state {exc}") from exc
            return {**{k: v for k, v in data.items() if k != "state"}, "database": state}
        return data

    @model_validator(mode="after")
    def _one_admin_token(self) -> DaemonSettings:
        pick(self.admin_token_env, self.admin_token_file, "admin_token", required=False)
        pick(self.state_password_env, self.state_password_file, "state_password", required=False)
        if self.database is None and self.database_password is not None:
            raise ValueError("state_password_env/_file need a postgresql:// state")
        return self

    @property
    def database_password(self) -> SecretStr | None:
        """The PostgreSQL password; None leaves it to libpq (PGPASSFILE, PGPASSWORD)."""
        return self.state_password_env or self.state_password_file

    @property
    def admin_token(self) -> SecretStr | None:
        """The token `POST /admin/resync` wants; None disables the route."""
        return self.admin_token_env or self.admin_token_file


class KeycrmSettings(Settings):
    """`[keycrm]`: the source of truth."""

    base_url: BaseUrl = "https://openapi.keycrm.app/v1"
    api_key_env: EnvSecret | None = None
    api_key_file: FileSecret | None = None
    requests_per_minute: int = Field(default=60, gt=0, le=6000)
    poll_interval: Duration = 300.0
    catalog_interval: Duration = 6 * 3600.0
    timeout: Timeout = 30.0
    #: how long a look-up waits for more webhook SKUs to fill its request (up to 50)
    lookup_window: DurationOrZero = 0.25
    #: poll keyCRM's orders changed since the last poll this often (`"0"`: no order feed)
    order_feed_interval: DurationOrOff = 15.0
    #: each poll reaches back this far before its watermark (clock skew, late commits)
    order_feed_overlap: DurationOrZero = 120.0
    webhook_token_env: EnvSecret | None = None
    webhook_token_file: FileSecret | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_key_variable(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key_env" not in data and "api_key_file" not in data:
            return {**data, "api_key_env": "KEYCRM_API_KEY"}
        return data

    @model_validator(mode="after")
    def _one_of_each(self) -> KeycrmSettings:
        pick(self.api_key_env, self.api_key_file, "api_key", required=True)
        pick(self.webhook_token_env, self.webhook_token_file, "webhook_token", required=False)
        return self

    @property
    def api_key(self) -> SecretStr:
        key = self.api_key_env or self.api_key_file
        assert key is not None
        return key

    @property
    def webhook_token(self) -> SecretStr | None:
        """The secret path segment of the webhook route; None disables the route."""
        return self.webhook_token_env or self.webhook_token_file


class SyncSettings(Settings):
    """`[sync]`: debounce and guards, shared by every channel."""

    debounce: DurationOrZero = 2.0
    max_delay: Duration = 30.0
    guard_fraction: float = Field(default=0.3, gt=0, le=1)
    resync_interval: Duration | None = None
    #: how long a batching channel waits for more due items to fill a request
    batch_window: DurationOrZero = 0.25
    #: read back what readable channels hold, this often (off when unset)
    verify_interval: Duration | None = None
    #: the share of a channel's rate limit read-back may use
    verify_share: float = Field(default=0.2, gt=0, le=1)

    @model_validator(mode="after")
    def _delay_after_debounce(self) -> SyncSettings:
        if self.max_delay < self.debounce:
            raise ValueError("max_delay must not be shorter than debounce")
        return self


@dataclass(frozen=True, slots=True)
class Config:
    """The whole, valid configuration."""

    path: Path
    daemon: DaemonSettings
    keycrm: KeycrmSettings
    sync: SyncSettings
    channels: tuple[ChannelConfig, ...]
    #: whose stock this is: the merchant file's stem, or `default` for a single-merchant file
    merchant: str = DEFAULT_MERCHANT

    @property
    def needs_warehouses(self) -> bool:
        """Whether any channel counts per warehouse, so scans must ask for `filter[details]`."""
        return any(c.rules.needs_warehouses for c in self.channels)


def read_document(path: Path) -> dict[str, Any]:
    """The TOML document at `path`, or ConfigError (key `config`) saying why it is none."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([("config", f"cannot read {path}: {exc.strerror or exc}")]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([("config", f"{path} is not valid TOML: {exc}")]) from exc
    except RecursionError as exc:
        raise ConfigError([("config", f"{path} nests arrays or tables too deeply")]) from exc


def section(
    document: Mapping[str, Any], name: str, model: type[Settings], faults: list[tuple[str, str]]
) -> Any:
    """One table validated by its model, or None with its faults added to `faults`."""
    raw = document.get(name, {})
    if not isinstance(raw, dict):
        faults.append((name, "must be a table"))
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        faults.extend(validation_faults(exc, (name,)))
        return None


def merchant_tables(
    document: Mapping[str, Any],
    registry: Mapping[str, ChannelSpec],
    base_dir: Path,
    faults: list[tuple[str, str]],
) -> tuple[KeycrmSettings | None, SyncSettings | None, list[ChannelConfig]]:
    """A merchant's own tables (`[keycrm]`, `[sync]`, `[[channel]]`), faults into `faults`."""
    keycrm = section(document, "keycrm", KeycrmSettings, faults)
    sync = section(document, "sync", SyncSettings, faults)
    channels = load_channels(document.get("channel", []), registry, base_dir, faults)
    return keycrm, sync, channels


def load_config(
    path: Path,
    registry: Mapping[str, ChannelSpec],
    *,
    check_machine: Callable[[Path, str], list[tuple[str, str]]] | None = None,
) -> Config:
    """Read, validate and resolve the whole single-merchant file, or raise ConfigError with
    every fault. A file naming a merchants folder is read by `load_deployment` instead.

    `check_machine(state, listen)` also checks what the file points at (`check-config` passes
    `daemon.shell.preflight.preflight`: the state file's folder, the listener's address), so
    those faults come with the rest.
    """
    document = read_document(path)
    base_dir = path.resolve().parent
    faults: list[tuple[str, str]] = []
    for unknown in sorted(set(document) - {"daemon", "keycrm", "sync", "channel"}):
        faults.append((unknown, "unknown section"))
    daemon = load_daemon(document, base_dir, faults)
    if daemon is not None and daemon.merchants is not None:
        raise ConfigError(
            [("daemon.merchants", "names a merchants folder: this command reads one merchant")]
        )
    if daemon is not None and check_machine is not None:
        faults.extend(machine_faults(daemon, daemon.state, check_machine))
    keycrm, sync, channels = merchant_tables(document, registry, base_dir, faults)
    if faults:
        raise ConfigError([(one_line(key), one_line(problem)) for key, problem in faults])
    assert daemon is not None
    assert keycrm is not None
    assert sync is not None
    return Config(path=path, daemon=daemon, keycrm=keycrm, sync=sync, channels=tuple(channels))


def load_daemon(
    document: Mapping[str, Any], base_dir: Path, faults: list[tuple[str, str]]
) -> DaemonSettings | None:
    """`[daemon]` with its paths resolved against the file's folder."""
    daemon: DaemonSettings | None = section(document, "daemon", DaemonSettings, faults)
    if daemon is None:
        return None
    update: dict[str, Path] = {}
    if not daemon.state.is_absolute():
        update["state"] = base_dir / daemon.state
    if daemon.merchants is not None and not daemon.merchants.is_absolute():
        update["merchants"] = base_dir / daemon.merchants
    return daemon.model_copy(update=update) if update else daemon


def machine_faults(
    daemon: DaemonSettings, state: Path, check: Callable[[Path, str], list[tuple[str, str]]]
) -> list[tuple[str, str]]:
    """What `check(state, listen)` finds; on PostgreSQL there is no state file to check."""
    machine = check(state, daemon.listen)
    if daemon.database is not None:
        machine = [fault for fault in machine if fault[0] != "daemon.state"]
    return machine


def secret_values(config: Config) -> list[str]:
    """Every secret the config resolved, for the log redactor and the tests that hunt leaks."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)

    for model in (config.daemon, config.keycrm, config.sync, *(c.options for c in config.channels)):
        walk(model)
    return found
