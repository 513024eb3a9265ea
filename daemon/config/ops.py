"""The few settings the read-only commands need, read without resolving any secret.

`status`, `resync` and `history` run in another shell than the daemon: an operator's terminal,
`kubectl exec`, a cron job. That shell rarely holds the channels' secrets (systemd hands them to
the service alone), so loading the whole config there would fail on "variable is not set" before
doing anything. These commands read only `[daemon]`: where it listens, where its state is (a file,
or a PostgreSQL DSN and where its password comes from), and where the admin token comes from
(each resolved only by the command that needs it, only when it does).

With `merchants = "DIR"` the state is per merchant: on SQLite `state` is a folder of
`<merchant>.db` files (default `state/` beside the file, as `load_deployment` reads it), on
PostgreSQL one database; `merchant_state` says where one merchant's is.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from daemon.config.deployment import DEFAULT_STATE_FOLDER
from daemon.config.dsn import SCHEMES, check_dsn
from daemon.config.settings import DEFAULT_MERCHANT, MERCHANT_ID
from daemon.core.errors import ConfigError
from daemon.core.secrets import read_env_secret, read_file_secret

__all__ = [
    "OpsSettings",
    "admin_token",
    "daemon_url",
    "database_password",
    "merchant_names",
    "merchant_state",
    "read_ops_settings",
]

DEFAULT_LISTEN = "127.0.0.1:9108"


@dataclass(frozen=True, slots=True)
class OpsSettings:
    """`[daemon]` as the read-only commands see it."""

    path: Path
    listen: str = DEFAULT_LISTEN
    state: Path = Path("stocksync.db")
    admin_token_env: str | None = None
    admin_token_file: str | None = None
    #: the PostgreSQL DSN when `state` is one (then `state` is unused)
    database: str | None = None
    state_password_env: str | None = None
    state_password_file: str | None = None
    #: the merchants folder (`daemon.merchants`); None for a single-merchant file
    merchants: Path | None = None


def _string(table: dict[str, object], key: str, faults: list[tuple[str, str]]) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        faults.append((f"daemon.{key}", "must be a non-empty string"))
        return None
    return value


def read_ops_settings(path: Path) -> OpsSettings:
    """`[daemon]` of the file, relative `state` resolved against the file's folder."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([("config", f"cannot read {path}: {exc.strerror or exc}")]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([("config", f"{path} is not valid TOML: {exc}")]) from exc
    table = document.get("daemon", {})
    if not isinstance(table, dict):
        raise ConfigError([("daemon", "must be a table")])
    faults: list[tuple[str, str]] = []
    listen = _string(table, "listen", faults) or DEFAULT_LISTEN
    folder = _string(table, "merchants", faults)
    merchants = None if folder is None else path.resolve().parent / folder
    default_state = "stocksync.db" if merchants is None else DEFAULT_STATE_FOLDER
    raw_state = _string(table, "state", faults) or default_state
    state = Path(raw_state)
    database = None
    if raw_state.startswith(SCHEMES):
        try:
            database = check_dsn(raw_state)
        except ValueError as exc:
            faults.append(("daemon.state", str(exc)))
    elif not state.is_absolute():
        state = path.resolve().parent / state
    env = _string(table, "admin_token_env", faults)
    file = _string(table, "admin_token_file", faults)
    password_env = _string(table, "state_password_env", faults)
    password_file = _string(table, "state_password_file", faults)
    if faults:
        raise ConfigError(faults)
    return OpsSettings(
        path=path,
        listen=listen,
        state=state,
        admin_token_env=env,
        admin_token_file=file,
        database=database,
        state_password_env=password_env,
        state_password_file=password_file,
        merchants=merchants,
    )


def merchant_names(settings: OpsSettings) -> list[str]:
    """The merchants the folder names (each `*.toml` whose stem is an id), in id order;
    `["default"]` for a single-merchant file."""
    if settings.merchants is None:
        return [DEFAULT_MERCHANT]
    if not settings.merchants.is_dir():
        return []
    stems = (file.stem for file in settings.merchants.glob("*.toml"))
    return sorted(stem for stem in stems if MERCHANT_ID.fullmatch(stem))


def merchant_state(settings: OpsSettings, merchant: str | None) -> tuple[str, Path]:
    """Whose state `history` reads, and its SQLite file (unused on PostgreSQL).

    ConfigError (`--merchant`) when a folder config is not told which merchant, or is told one
    it does not name; a single-merchant file knows only `default`.
    """
    names = merchant_names(settings)
    if settings.merchants is None:
        if merchant not in (None, DEFAULT_MERCHANT):
            raise ConfigError(
                [
                    (
                        "--merchant",
                        f"{settings.path} serves one merchant, {DEFAULT_MERCHANT} "
                        "(it names no daemon.merchants folder)",
                    )
                ]
            )
        return DEFAULT_MERCHANT, settings.state
    known = ", ".join(names) or "none"
    if merchant is None:
        raise ConfigError(
            [
                (
                    "--merchant",
                    f"required: {settings.path} serves the merchants in {settings.merchants} "
                    f"({known})",
                )
            ]
        )
    if merchant not in names:
        raise ConfigError([("--merchant", f"no merchant {merchant!r} (merchants: {known})")])
    return merchant, settings.state / f"{merchant}.db"


def daemon_url(listen: str) -> str:
    """The base URL that reaches a listener bound to `listen` from this host."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):  # noqa: S104 -- reaching a wildcard listener locally
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def database_password(settings: OpsSettings | None) -> SecretStr | None:
    """The PostgreSQL password from `state_password_env`/`_file`; None leaves it to libpq
    (`PGPASSWORD`, `PGPASSFILE`). Raises ConfigError naming the key if it cannot be read."""
    if settings is None:
        return None
    try:
        if settings.state_password_env is not None:
            return read_env_secret(settings.state_password_env)
        if settings.state_password_file is not None:
            return read_file_secret(settings.state_password_file)
    except ValueError as exc:
        raise ConfigError([("daemon.state_password", str(exc))]) from exc
    return None


def admin_token(settings: OpsSettings | None, token_env: str | None) -> SecretStr | None:
    """The admin token: `--token-env` first, else the config's `admin_token_env`/`_file`.

    Raises ConfigError naming the variable or file if it is named but cannot be read.
    """
    try:
        if token_env is not None:
            return read_env_secret(token_env)
        if settings is None:
            return None
        if settings.admin_token_env is not None:
            return read_env_secret(settings.admin_token_env)
        if settings.admin_token_file is not None:
            return read_file_secret(settings.admin_token_file)
    except ValueError as exc:
        key = "--token-env" if token_env is not None else "daemon.admin_token"
        raise ConfigError([(key, str(exc))]) from exc
    return None
