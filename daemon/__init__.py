"""stocksync: keeps sales channels' stock equal to keyCRM's, seconds after it changes."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # Looked up when first asked for: importlib.metadata costs a tenth of a second at start,
    # before `daemon.commands.entry` can turn a Ctrl-C into one line.
    if name != "__version__":
        raise AttributeError(f"module 'daemon' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        found = version("stocksync")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0"
    globals()["__version__"] = found
    return found
