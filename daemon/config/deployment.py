"""A deployment: the main file's `[daemon]` and every merchant it serves.

A file without `[daemon] merchants` is today's single-merchant form: one merchant, `default`,
whose tables are in the file itself. With `merchants = "DIR"` each `*.toml` in that folder is one
merchant (`acme.toml` -> `acme`) holding its own `[keycrm]`, `[sync]` and `[[channel]]` tables
with exactly the single-merchant keys; the main file keeps `[daemon]` alone.

A fault of the main file is fatal (ConfigError: nothing can run without the listener and the
state). A fault of one merchant's file is that merchant's alone: `Deployment.broken` keeps it
with its faults, so `run` starts every other merchant (and a reload keeps the broken one's
previous config), while `check-config` reports every fault of every file and fails.

With SQLite, `state` is then a folder: one state file (and lock) per merchant,
`<state>/<merchant>.db`, set on each merchant's `Config.daemon.state`, so everything that opens a
merchant's state keeps taking one `Config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config.fields import one_line
from daemon.config.settings import (
    MERCHANT_ID,
    Config,
    DaemonSettings,
    load_config,
    load_daemon,
    machine_faults,
    merchant_tables,
    read_document,
)
from daemon.core.channel import ChannelSpec
from daemon.core.errors import ConfigError

__all__ = ["Deployment", "load_deployment", "merchant_file_faults"]

Faults = tuple[tuple[str, str], ...]
CheckMachine = Callable[[Path, str], list[tuple[str, str]]]
#: what a SQLite merchants deployment calls its state folder when `state` is not given
DEFAULT_STATE_FOLDER = "state"


@dataclass(frozen=True, slots=True)
class Deployment:
    """The whole, valid main file and the merchants it serves."""

    path: Path
    daemon: DaemonSettings
    #: every merchant whose file is valid, by id, in id order
    merchants: Mapping[str, Config]
    #: merchants whose file is not valid: their faults, keyed `<file> <key>`
    broken: Mapping[str, Faults] = field(default_factory=dict)
    #: the merchants folder; None for a single-merchant file
    folder: Path | None = None

    @classmethod
    def single(cls, config: Config) -> Deployment:
        """Today's one-merchant file as a deployment."""
        return cls(config.path, config.daemon, {config.merchant: config})

    @property
    def names(self) -> list[str]:
        """Every merchant the folder names, valid or not, in id order."""
        return sorted({*self.merchants, *self.broken})

    def faults(self) -> list[tuple[str, str]]:
        """Every merchant file's faults, in merchant order (for `check-config`)."""
        return [fault for name in sorted(self.broken) for fault in self.broken[name]]


def load_deployment(
    path: Path, registry: Mapping[str, ChannelSpec], *, check_machine: CheckMachine | None = None
) -> Deployment:
    """Read the main file and, if it names one, every merchant file in its folder.

    Raises ConfigError for the main file's faults (all of them); each merchant file's faults
    land in `broken` instead, so one bad merchant does not stop the others.
    """
    document = read_document(path)
    base_dir = path.resolve().parent
    faults: list[tuple[str, str]] = []
    daemon = load_daemon(document, base_dir, faults)
    if daemon is None or daemon.merchants is None:
        if faults:
            raise ConfigError([(one_line(k), one_line(p)) for k, p in faults])
        return Deployment.single(load_config(path, registry, check_machine=check_machine))
    for name in sorted(set(document) - {"daemon"}):
        if name in ("keycrm", "sync", "channel"):
            faults.append((name, "belongs in each merchant's file (daemon.merchants names them)"))
        else:
            faults.append((name, "unknown section"))
    folder = daemon.merchants
    files = _merchant_files(folder, faults)
    # Not `model_fields_set`: resolving the default against the file's folder sets `state` too.
    table = document.get("daemon")
    if daemon.database is None and not (isinstance(table, dict) and "state" in table):
        daemon = daemon.model_copy(update={"state": base_dir / DEFAULT_STATE_FOLDER})
    if check_machine is not None:
        # The listener once; each merchant's state file with its merchant below.
        faults.extend(
            f for f in machine_faults(daemon, daemon.state, check_machine) if f[0] != "daemon.state"
        )
    if faults:
        raise ConfigError([(one_line(k), one_line(p)) for k, p in faults])
    merchants: dict[str, Config] = {}
    broken: dict[str, Faults] = {}
    for name, file in files.items():
        config, problems = _load_merchant(name, file, daemon, registry, check_machine)
        if config is not None:
            merchants[name] = config
        else:
            broken[name] = problems
    _refuse_shared_tokens(merchants, broken)
    return Deployment(path, daemon, merchants, broken, folder)


def merchant_file_faults(deployment: Deployment, name: str) -> list[tuple[str, str]]:
    """One merchant's faults (`check-config --merchant NAME`); ConfigError for an unknown one."""
    if name not in deployment.merchants and name not in deployment.broken:
        known = ", ".join(deployment.names) or "none"
        raise ConfigError([("--merchant", f"no merchant {name!r} (merchants: {known})")])
    return list(deployment.broken.get(name, ()))


def _merchant_files(folder: Path, faults: list[tuple[str, str]]) -> dict[str, Path]:
    """Each `*.toml` of the folder by merchant id; file names that are no id are faults."""
    if not folder.is_dir():
        faults.append(("daemon.merchants", f"folder {folder} does not exist"))
        return {}
    files: dict[str, Path] = {}
    for file in sorted(folder.glob("*.toml")):
        if MERCHANT_ID.fullmatch(file.stem) is None:
            faults.append(
                (
                    "daemon.merchants",
                    f"{file.name}: a merchant's file name is its id: lower-case letters, digits,"
                    " '-' and '_', starting with a letter or digit, up to 63 characters",
                )
            )
        else:
            files[file.stem] = file
    if not files and not faults:
        faults.append(("daemon.merchants", f"folder {folder} holds no merchant file (*.toml)"))
    return files


def _load_merchant(
    name: str,
    file: Path,
    daemon: DaemonSettings,
    registry: Mapping[str, ChannelSpec],
    check_machine: CheckMachine | None,
) -> tuple[Config | None, Faults]:
    """One merchant's Config, or its faults keyed `<file> <key>`."""
    faults: list[tuple[str, str]] = []
    try:
        document = read_document(file)
    except ConfigError as exc:
        return None, tuple((file.name, problem) for _key, problem in exc.faults)
    for section in sorted(set(document) - {"keycrm", "sync", "channel"}):
        if section == "daemon":
            faults.append((section, "belongs in the main file, not a merchant's"))
        else:
            faults.append((section, "unknown section"))
    keycrm, sync, channels = merchant_tables(document, registry, file.parent, faults)
    own = daemon
    if daemon.database is None:
        own = daemon.model_copy(update={"state": daemon.state / f"{name}.db"})
        if check_machine is not None:
            state = [
                f for f in machine_faults(own, own.state, check_machine) if f[0] == "daemon.state"
            ]
            faults.extend(state)
    if faults:
        return None, tuple((f"{file.name} {one_line(k)}", one_line(p)) for k, p in faults)
    assert keycrm is not None
    assert sync is not None
    return Config(file, own, keycrm, sync, tuple(channels), merchant=name), ()


def _refuse_shared_tokens(merchants: dict[str, Config], broken: dict[str, Faults]) -> None:
    """The webhook token says whose webhook it is: two merchants with one token are both
    broken (a webhook could not tell them apart)."""
    seen: dict[str, list[str]] = {}
    for name, config in merchants.items():
        token = config.keycrm.webhook_token
        if token is not None:
            seen.setdefault(token.get_secret_value(), []).append(name)
    for names in seen.values():
        if len(names) < 2:
            continue
        for name in names:
            others = ", ".join(n for n in names if n != name)
            file = merchants[name].path.name
            broken[name] = (
                (
                    f"{file} keycrm.webhook_token",
                    f"same token as {others}; each merchant needs its own",
                ),
            )
            del merchants[name]
