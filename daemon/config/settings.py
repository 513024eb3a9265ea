"""TOML configuration to frozen, typed settings, with every fault reported at once.

`load_config` returns a `Config` or raises `ConfigError` whose `faults` are `(key, problem)`
pairs such as `('channel "klump".rate_limit', "'5/x' is not a rate ...")`: `check-config` prints
them one per line, and a SIGHUP reload logs them while the old config keeps running. A channel is
named by its `name` when it has a usable, unique one, else by its place (`channel[1]`).

Keys of a `[[channel]]` table that the engine does not know (credentials, `match`, `store_map`...)
belong to the channel type, whose adapter validates them with its own model.
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
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from daemon.config.dsn import SCHEMES, check_dsn
from daemon.core.channel import ChannelSpec, Shape
from daemon.core.errors import ConfigError
from daemon.core.secrets import EnvSecret, FileSecret, pick
from daemon.core.units import parse_duration, parse_rate
from daemon.rules.keymap import KeyMapCache
from daemon.rules.plan import Rules, compile_template

MAX_TIMEOUT = 3600.0
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

__all__ = [
    "BaseUrl",
    "ChannelConfig",
    "Config",
    "DaemonSettings",
    "Duration",
    "KeycrmSettings",
    "Settings",
    "SyncSettings",
    "load_config",
    "secret_values",
]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def _lease_ttl(seconds: float) -> float:
    if seconds < 3:
        raise ValueError("must be at least 3s: the lease is renewed every third of it")
    return seconds


def _base_url(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _listen(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string such as 127.0.0.1:9108")
    match = re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\s\[\]]+):(\d{1,5})$", value)
    if match is None or not 0 <= int(match.group(2)) <= 65535:
        shown = repr(value) if len(value) <= 60 else repr(value[:60]) + "..."
        raise ValueError(f"{shown} is not host:port (e.g. 127.0.0.1:9108 or [::1]:9108)")
    return value


def _timeout(seconds: float) -> float:
    if seconds > MAX_TIMEOUT:
        raise ValueError("must be at most 1h")
    return seconds


#: Seconds, written with a unit; must be above zero.
Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
#: Seconds for one request or a drain: above zero, at most an hour.
Timeout = Annotated[
    float, BeforeValidator(parse_duration), AfterValidator(_positive), AfterValidator(_timeout)
]
#: Seconds, written with a unit; zero allowed.
DurationOrZero = Annotated[float, BeforeValidator(parse_duration)]
#: Events per second, written "N/s" or "N/m".
Rate = Annotated[float, BeforeValidator(parse_rate)]
BaseUrl = Annotated[str, BeforeValidator(_base_url)]


class Settings(BaseModel):
    """Base of every settings table: immutable, and unknown keys are faults, not silence."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


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


class ChannelCommon(Settings):
    """The engine's keys of a `[[channel]]` table: naming, planning and dispatch."""

    name: Annotated[str, Field(pattern=_NAME)]
    type: str
    key: str | None = None
    key_map: Path | None = None
    buffer: int = Field(default=0, ge=0)
    cap: int | None = Field(default=None, gt=0)
    warehouses: tuple[int, ...] = ()
    subtract_reserve: bool = True
    concurrency: int = Field(default=4, gt=0, le=256)
    rate_limit: Rate | None = None
    timeout: Timeout = 10.0
    batch_size: int | None = Field(default=None, gt=0)
    reassert_interval: Duration | None = None


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One channel, validated: the engine's settings, the adapter's settings and its rules."""

    name: str
    type: str
    spec: ChannelSpec
    options: BaseModel
    rules: Rules
    concurrency: int
    rate: float
    timeout: float
    batch_size: int
    #: push the acknowledged values again on this schedule (channels that cannot be read back)
    reassert_interval: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole, valid configuration."""

    path: Path
    daemon: DaemonSettings
    keycrm: KeycrmSettings
    sync: SyncSettings
    channels: tuple[ChannelConfig, ...]

    @property
    def needs_warehouses(self) -> bool:
        """Whether any channel counts per warehouse, so scans must ask for `filter[details]`."""
        return any(c.rules.needs_warehouses for c in self.channels)


def _key_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


def _faults(exc: ValidationError, prefix: tuple[int | str, ...]) -> list[tuple[str, str]]:
    out = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not str(p).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        out.append((_key_text(prefix + loc) or "config", message))
    return out


def _one_line(text: str, limit: int = 300) -> str:
    """A fault's text as one line of sane length, whatever the file held."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _channel_label(index: int, table: Mapping[str, Any], shared: set[str]) -> str:
    """`channel "klump"` for a channel with a usable name of its own, else `channel[1]`."""
    name = table.get("name")
    if isinstance(name, str) and re.match(_NAME, name) and name not in shared:
        return f'channel "{name}"'
    return f"channel[{index}]"


def _channel(
    where: tuple[int | str, ...],
    table: Mapping[str, Any],
    registry: Mapping[str, ChannelSpec],
    base_dir: Path,
    faults: list[tuple[str, str]],
    *,
    key_maps: KeyMapCache,
) -> ChannelConfig | None:
    before = len(faults)
    engine_keys = ChannelCommon.model_fields.keys()
    common_part = {k: v for k, v in table.items() if k in engine_keys}
    adapter_part = {k: v for k, v in table.items() if k not in engine_keys}
    common: ChannelCommon | None = None
    try:
        common = ChannelCommon.model_validate(common_part)
    except ValidationError as exc:
        faults.extend(_faults(exc, where))
    type_name = table.get("type")
    spec = registry.get(type_name) if isinstance(type_name, str) else None
    if spec is None:
        if isinstance(type_name, str):
            known = ", ".join(sorted(registry))
            faults.append(
                (_key_text((*where, "type")), f"unknown type {type_name!r}; known: {known}")
            )
        return None
    options: BaseModel | None = None
    try:
        options = spec.settings.model_validate(adapter_part)
    except ValidationError as exc:
        faults.extend(_faults(exc, where))
    if common is None:
        return None

    key_map = None
    if spec.requires_key and common.key is None and common.key_map is None:
        faults.append(
            (_key_text((*where, "key")), f"type {common.type} needs key or key_map (the item ids)")
        )
    if common.key_map is not None:
        if common.key is not None:
            faults.append((_key_text((*where, "key")), "give key or key_map, not both"))
        path = common.key_map if common.key_map.is_absolute() else base_dir / common.key_map
        try:
            key_map = key_maps.load(path)
        except ValueError as exc:
            faults.append((_key_text((*where, "key_map")), str(exc)))
    shape: Shape | None = None
    try:
        if options is not None:
            shape = spec.shape(options, common.key)
            templates = tuple(compile_template(part) for part in shape.key_parts)
        elif common.key is not None:
            compile_template(common.key)
    except ValueError as exc:
        faults.append((_key_text((*where, "key")), str(exc)))
    if common.batch_size is not None and common.batch_size > spec.max_batch:
        limit = f"must be at most {spec.max_batch} for type {common.type}"
        faults.append((_key_text((*where, "batch_size")), limit))
    if len(faults) > before or shape is None or options is None:
        return None
    rules = Rules(
        key_parts=templates,
        key_map=key_map,
        location=shape.location,
        locations=shape.locations,
        warehouses=frozenset(common.warehouses),
        subtract_reserve=common.subtract_reserve,
        buffer=common.buffer,
        cap=common.cap,
        price=shape.price,
        live_threshold=shape.live_threshold,
    )
    return ChannelConfig(
        name=common.name,
        type=common.type,
        spec=spec,
        options=options,
        rules=rules,
        concurrency=common.concurrency,
        rate=common.rate_limit if common.rate_limit is not None else parse_rate(spec.default_rate),
        timeout=common.timeout,
        batch_size=common.batch_size or spec.default_batch or spec.max_batch,
        reassert_interval=common.reassert_interval,
    )


def _channels(
    tables: Any,
    registry: Mapping[str, ChannelSpec],
    base_dir: Path,
    faults: list[tuple[str, str]],
) -> list[ChannelConfig]:
    """Every `[[channel]]` table; a name used twice is a fault even when the tables have others."""
    channels: list[ChannelConfig] = []
    key_maps = KeyMapCache()
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        faults.append(("channel", "must be an array of tables: [[channel]]"))
        tables = []
    if not tables:
        faults.append(("channel", "at least one [[channel]] is required"))
    first: dict[str, int] = {}
    shared: set[str] = set()
    for index, table in enumerate(tables):
        name = table.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            shared.add(name)
            faults.append(
                (f"channel[{index}].name", f"{name!r} is also the name of channel[{first[name]}]")
            )
        else:
            first[name] = index
    for index, table in enumerate(tables):
        label = _channel_label(index, table, shared)
        channel = _channel((label,), table, registry, base_dir, faults, key_maps=key_maps)
        if channel is not None:
            channels.append(channel)
    return channels


def load_config(
    path: Path,
    registry: Mapping[str, ChannelSpec],
    *,
    check_machine: Callable[[Path, str], list[tuple[str, str]]] | None = None,
) -> Config:
    """Read, validate and resolve the whole file, or raise ConfigError with every fault.

    `check_machine(state, listen)` also checks what the file points at (`check-config` passes
    `daemon.shell.preflight.preflight`: the state file's folder, the listener's address), so
    those faults come with the rest.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([("config", f"cannot read {path}: {exc.strerror or exc}")]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([("config", f"{path} is not valid TOML: {exc}")]) from exc
    except RecursionError as exc:
        raise ConfigError([("config", f"{path} nests arrays or tables too deeply")]) from exc
    base_dir = path.resolve().parent
    faults: list[tuple[str, str]] = []
    for unknown in sorted(set(document) - {"daemon", "keycrm", "sync", "channel"}):
        faults.append((unknown, "unknown section"))

    def section(name: str, model: type[Settings]) -> Any:
        raw = document.get(name, {})
        if not isinstance(raw, dict):
            faults.append((name, "must be a table"))
            return None
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            faults.extend(_faults(exc, (name,)))
            return None

    daemon = section("daemon", DaemonSettings)
    if daemon is not None and not daemon.state.is_absolute():
        daemon = daemon.model_copy(update={"state": base_dir / daemon.state})
    if daemon is not None and check_machine is not None:
        machine = check_machine(daemon.state, daemon.listen)
        if daemon.database is not None:  # the state is in PostgreSQL: there is no file to check
            machine = [fault for fault in machine if fault[0] != "daemon.state"]
        faults.extend(machine)
    keycrm = section("keycrm", KeycrmSettings)
    sync = section("sync", SyncSettings)

    channels = _channels(document.get("channel", []), registry, base_dir, faults)
    if faults:
        raise ConfigError([(_one_line(key), _one_line(problem)) for key, problem in faults])
    return Config(path=path, daemon=daemon, keycrm=keycrm, sync=sync, channels=tuple(channels))


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
