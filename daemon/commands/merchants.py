"""Which merchant a command works on, and every secret a deployment names.

`once` and `drift` work on one merchant's config and state: with a merchants folder the operator
says which (`--merchant NAME`), and a name the folder does not hold is refused with the list of
those it does. A single-merchant file is merchant `default`, so `--merchant` stays optional
there and every existing script keeps working.
"""

from __future__ import annotations

from daemon.config.deployment import Deployment, merchant_file_faults
from daemon.config.settings import Config, secret_values
from daemon.core.errors import ConfigError
from daemon.core.secrets import secrets_named_in

__all__ = ["deployment_secrets", "merchant_file", "pick"]


def pick(deployment: Deployment, name: str | None) -> Config:
    """The one merchant a command works on; ConfigError (`--merchant`, or the chosen file's own
    faults) when it cannot be told or its file is not valid."""
    if deployment.folder is None:
        (config,) = deployment.merchants.values()
        if name not in (None, config.merchant):
            raise ConfigError(
                [
                    (
                        "--merchant",
                        f"{deployment.path} serves one merchant, {config.merchant} "
                        "(it names no daemon.merchants folder)",
                    )
                ]
            )
        return config
    if name is None:
        known = ", ".join(deployment.names) or "none"
        raise ConfigError(
            [
                (
                    "--merchant",
                    f"required: {deployment.path} serves the merchants in {deployment.folder} "
                    f"({known})",
                )
            ]
        )
    faults = merchant_file_faults(deployment, name)  # ConfigError for a name it does not hold
    if faults:
        raise ConfigError(faults)
    return deployment.merchants[name]


def merchant_file(deployment: Deployment, name: str) -> str:
    """How `check-config` names a merchant's file: `acme.toml`."""
    config = deployment.merchants.get(name)
    return config.path.name if config is not None else f"{name}.toml"


def deployment_secrets(deployment: Deployment) -> list[str]:
    """Every secret of every valid merchant, and those a broken merchant's file names that this
    shell can read (its faults may quote a value; its later reload may resolve them)."""
    found = [value for config in deployment.merchants.values() for value in secret_values(config)]
    if deployment.folder is not None:
        for name in deployment.broken:
            found += secrets_named_in(deployment.folder / f"{name}.toml")
    return found
